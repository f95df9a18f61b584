"""Marketplace routes: agents and models (list, get, publish, update, delete, allow-lists) and
calls to an agent (``hire``, ``run_task``), proxied to its endpoint.

Agents and models are the same shape, so one set of handlers serves both tables. Listings are
public, but a private entity is shown only to its owner and the addresses on its allow-list,
so listing and get take an optional signature. A call is signed (scope ``hire``) and goes
through ``app.proxy`` (``node.gateway.proxy.AgentProxy``); a node without one answers ``503``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.gateway.endpoint import Endpoint, Handler, kind_schema
from node.gateway.http import HttpError, Request, Response
from node.ledger.state import build_id_of

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS"]


def _listing_handlers(table: str, noun: str) -> dict[str, Handler]:
    id_field = f"{noun}_id"

    def visible(app: GatewayApp, entity: dict[str, Any], viewer: str | None) -> bool:
        return entity.get("access") != "private" or viewer in (
            entity["owner_id"],
            *entity.get("allow_list", []),
        )

    def viewer_of(app: GatewayApp, request: Request) -> str | None:
        return app.actor(request, "read")[0] if request.signed is not None else None

    async def list_(app: GatewayApp, request: Request) -> Response:
        viewer = viewer_of(app, request)
        entities = [e for e in app.view(getattr(app.state, table)) if visible(app, e, viewer)]
        return Response(200, {"count": len(entities), table: entities})

    async def get(app: GatewayApp, request: Request) -> Response:
        viewer = viewer_of(app, request)
        entity = app.view(lambda: getattr(app.state, noun)(request.params["id"]))
        if entity is None or not visible(app, entity, viewer):
            raise HttpError(404, "not_found", f"no {noun} {request.params['id']} visible to you")
        return Response(200, entity)

    async def write(app: GatewayApp, request: Request) -> Response:
        done = await app.mutate(request)
        entity_id = request.params.get("id") or build_id_of(done.author, done.payload["name"])
        entity = app.view(lambda: getattr(app.state, noun)(entity_id))
        status = 201 if done.kind.endswith(".register") else 200
        return Response(status, {"op_id": done.op_id, id_field: entity_id, noun: entity})

    return {"list": list_, "get": get, "write": write}


def _agent_call(path_kind: str) -> Handler:
    async def call(app: GatewayApp, request: Request) -> Response:
        actor = app.actor(request, "hire")[0]
        agent = app.view(lambda: app.state.agent(request.params["id"]))
        if agent is None or (
            agent.get("access") == "private"
            and actor not in (agent["owner_id"], *agent.get("allow_list", []))
        ):
            raise HttpError(404, "not_found", f"no agent {request.params['id']} you may use")
        if app.proxy is None:
            raise HttpError(503, "unavailable", "this node does not proxy agent calls")
        instances = app.view(lambda: app.state.instances_by_build(request.params["id"]))
        return await app.proxy.call(agent, path_kind, request, actor, instances)  # type: ignore[no-any-return]

    return call


def _listing_rows(table: str, noun: str) -> list[Endpoint]:
    handlers = _listing_handlers(table, noun)
    return [
        Endpoint(
            method="GET",
            path=f"/{table}",
            handler=handlers["list"],
            operation_id=f"{noun}List",
            summary=f"Public {table} (and private ones the signer may see)",
            auth="optional",
            tag=table,
        ),
        Endpoint(
            method="GET",
            path=f"/{table}/{{id}}",
            handler=handlers["get"],
            operation_id=f"{noun}Get",
            summary=f"One {noun}",
            auth="optional",
            tag=table,
        ),
        Endpoint(
            method="POST",
            path=f"/{table}/create",
            handler=handlers["write"],
            operation_id=f"{noun}Create",
            summary=f"Publish a {noun}",
            auth="signed",
            body_schema=kind_schema(f"{noun}.register", drop=("id",)),
            status=201,
            tag=table,
        ),
        Endpoint(
            method="POST",
            path=f"/{table}/update",
            handler=handlers["write"],
            operation_id=f"{noun}Update",
            summary=f"Update one of the signer's {table}",
            auth="signed",
            body_schema=kind_schema(f"{noun}.update", drop=("id",)),
            tag=table,
        ),
        Endpoint(
            method="POST",
            path=f"/{table}/delete",
            handler=handlers["write"],
            operation_id=f"{noun}Delete",
            summary=f"Delete one of the signer's {table}",
            auth="signed",
            body_schema=kind_schema(f"{noun}.delete", drop=("id",)),
            tag=table,
        ),
        Endpoint(
            method="POST",
            path=f"/{table}/{{id}}/allow",
            handler=handlers["write"],
            operation_id=f"{noun}Allow",
            summary=f"Let an address use a private {noun}",
            auth="signed",
            body_schema=kind_schema(f"{noun}.allow", drop=("id", "name")),
            tag=table,
        ),
        Endpoint(
            method="POST",
            path=f"/{table}/{{id}}/disallow",
            handler=handlers["write"],
            operation_id=f"{noun}Disallow",
            summary=f"Take an address off a {noun}'s allow-list",
            auth="signed",
            body_schema=kind_schema(f"{noun}.disallow", drop=("id", "name", "tags")),
            tag=table,
        ),
    ]


ROWS = [
    *_listing_rows("agents", "agent"),
    *_listing_rows("models", "model"),
    Endpoint(
        method="POST",
        path="/agents/{id}/hire",
        handler=_agent_call("hire"),
        operation_id="agentHire",
        summary="Call an agent (proxied to its endpoint, streamed back)",
        auth="signed",
        tag="agents",
    ),
    Endpoint(
        method="POST",
        path="/agents/{id}/run_task",
        handler=_agent_call("run_task"),
        operation_id="agentRunTask",
        summary="Run a task on an agent (proxied, streamed back)",
        auth="signed",
        tag="agents",
    ),
]
