"""Instance routes: record an instance from a Formfile, read the signer's, stop/start/delete.

Every instance route is signed and shows the signer only its own instances (a build's
instances and their mesh addresses included). No node builds or boots instances yet: a create
is recorded and replicated, and its answer says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.gateway.endpoint import EMPTY_BODY, Endpoint, kind_schema
from node.gateway.http import HttpError, Request, Response
from node.gateway.routes.builds import formfile_refusal
from node.ledger.state import build_id_of, instance_id_of

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS"]


def _owned_instance(app: GatewayApp, request: Request, instance_id: str) -> dict[str, Any]:
    actor = app.actor(request, "read")[0]
    instance = app.view(lambda: app.state.instance(instance_id))
    if instance is None:
        raise HttpError(404, "not_found", f"no instance {instance_id}")
    if instance["instance_owner"] != actor:
        raise HttpError(403, "forbidden", f"instance {instance_id} is not {actor}'s")
    return dict(instance)


async def instance_create(app: GatewayApp, request: Request) -> Response:
    refusal = await formfile_refusal(app, request)
    if refusal is not None:
        return refusal
    done = await app.mutate(request)
    instance_id = instance_id_of(done.author, done.payload["name"])
    instance = app.view(lambda: app.state.instance(instance_id))
    return Response(
        201,
        {
            "op_id": done.op_id,
            "instance_id": instance_id,
            "build_id": build_id_of(done.author, done.payload["name"]),
            "status": instance["status"] if instance else None,
            "note": "recorded and replicated; no node builds or boots instances yet",
            "instance": instance,
        },
    )


async def instance_list(app: GatewayApp, request: Request) -> Response:
    actor = app.actor(request, "read")[0]
    instances = app.view(lambda: app.state.instances(actor))
    return Response(200, {"success": True, "count": len(instances), "instances": instances})


async def instance_get(app: GatewayApp, request: Request) -> Response:
    return Response(200, _owned_instance(app, request, request.params["id"]))


def _owned_build(app: GatewayApp, request: Request) -> list[dict[str, Any]]:
    actor = app.actor(request, "read")[0]
    build_id = request.params["id"]
    instances = app.view(lambda: app.state.instances_by_build(build_id))
    return [i for i in instances if i["instance_owner"] == actor]


async def instance_by_build(app: GatewayApp, request: Request) -> Response:
    instances = _owned_build(app, request)
    return Response(200, {"count": len(instances), "instances": instances})


async def instance_ips(app: GatewayApp, request: Request) -> Response:
    instances = _owned_build(app, request)
    ips = [i["formnet_ip"] for i in instances if i.get("formnet_ip")]
    return Response(200, {"build_id": request.params["id"], "ips": ips})


async def instance_action(app: GatewayApp, request: Request) -> Response:
    done = await app.mutate(request)
    instance = app.view(lambda: app.state.instance(request.params["id"]))
    return Response(200, {"op_id": done.op_id, "instance": instance})


ROWS = [
    Endpoint(
        method="POST",
        path="/instance/create",
        handler=instance_create,
        operation_id="instanceCreate",
        summary="Record an instance request from a Formfile",
        auth="signed",
        body_schema=kind_schema("instance.create", drop=("id",)),
        status=201,
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/list",
        handler=instance_list,
        operation_id="instanceList",
        summary="The signer's instances",
        auth="signed",
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/{id}/get",
        handler=instance_get,
        operation_id="instanceGet",
        summary="One of the signer's instances",
        auth="signed",
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/{id}/get_by_build_id",
        handler=instance_by_build,
        operation_id="instanceByBuild",
        summary="The signer's instances of a build",
        auth="signed",
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/{id}/get_instance_ips",
        handler=instance_ips,
        operation_id="instanceIps",
        summary="Mesh addresses of a build's instances",
        auth="signed",
        tag="instances",
    ),
    *(
        Endpoint(
            method="POST",
            path=f"/instance/{{id}}/{verb}",
            handler=instance_action,
            operation_id=f"instance{verb.title()}",
            summary=f"{verb.title()} one of the signer's instances",
            auth="signed",
            body_schema=EMPTY_BODY,
            tag="instances",
        )
        for verb in ("stop", "start", "reboot", "delete")
    ),
]
