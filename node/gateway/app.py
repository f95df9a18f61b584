"""The gateway's HTTP API: routes, OpenAPI and the ASGI application.

Theory of operation
-------------------
The gateway is the node's only front door. Every route is declared once in ``ENDPOINTS``
(method, path template, who may call it, request schema, handler); routing, the OpenAPI
document at ``/openapi.json`` and the docs' route table all come from that list, so they
cannot disagree. Each route answers under ``/v1`` and unprefixed, as the upstream's clients
use both.

**Reads** come straight from the replicated state. Public ones (health, nodes, the agent and
model listings) need no signature; private ones (accounts, instances, keys) need a signed
request (``node.gateway.auth``) and show the signer only what it owns.

**Writes** never become node-signed ops: the signed request itself becomes a *request op*
(``node.ledger.request_op``), verified here exactly as every other replica will verify it,
stored durably (fsync) and gossiped; only then does the client get its answer. So an answer of
``200``/``201`` means "durable here and on its way to the fog", and nothing a client is told
was accepted can be lost by a crash of this node.

**Delegated keys.** A request signed by a key the account granted (``POST /key/grant``) acts
for that account when it names it in ``X-Act-As`` and the grant covers the route's scope; the
gateway embeds the grant op in the request op so other replicas can check it. Revoked or
expired grants are refused here.

**Errors** are JSON ``{"error": code, "message": text, "field"?: name}`` with a stable code:
``401`` for anything about the signature (nothing is applied), ``400`` for a request the
state refuses (the message names the field), ``403`` for someone else's entity, ``404``,
``405``, ``409`` for a create of something that exists, ``413`` for a body over
``REQUEST_BODY_BYTES_MAX``. A handler bug is logged and answered ``500`` without details.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from node import __version__
from node.gateway.auth import WINDOW_S_DEFAULT, AuthError, NonceCache, authenticate
from node.gateway.http import REQUEST_BODY_BYTES_MAX, AsgiApp, HttpError, Request, Response, Router
from node.identity.keys import normalize_address
from node.ledger.op import Op, OpRejected, decode_op
from node.ledger.request_op import (
    SCOPE_OF_KIND,
    Route,
    request_op_body,
    route_of,
)
from node.ledger.schema import Spec, json_schema
from node.ledger.state import KINDS, State, build_id_of, instance_id_of
from node.replica import Replica, SubmitResult

__all__ = ["ENDPOINTS", "REQUEST_BODY_BYTES_MAX", "GatewayApp", "GatewayNode", "openapi"]

log = logging.getLogger("formation.gateway")

_ADDRESS: Final = "0x[0-9a-fA-F]{40}"


class GatewayNode(Protocol):
    """What the gateway needs from the node it runs in."""

    replica: Replica

    def info(self) -> dict[str, Any]: ...

    async def submit_checked(self, ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult: ...


Handler = Callable[["GatewayApp", Request], Awaitable[Response]]


@dataclass(frozen=True)
class Mutation:
    """A write the gateway stored and gossiped: what it did and for whom."""

    kind: str
    payload: dict[str, Any]
    op_id: str  # 0x + hex
    author: str  # the account acted for (the signer, or the account that granted its key)


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str  # unprefixed, with {name} parameters
    name: str  # the OpenAPI operationId
    summary: str
    handler: Handler
    auth: str = "public"  # "public", "signed" or "optional" (signed shows more)
    request: dict[str, Any] | None = None  # JSON schema of the body
    status: int = 200
    tag: str = "node"

    @property
    def path(self) -> str:  # what node.gateway.http.Router matches
        return self.template


# -- the application ----------------------------------------------------------------------------


class GatewayApp(AsgiApp):
    """The ASGI application. ``clock`` returns unix seconds (injected in tests)."""

    def __init__(
        self,
        node: GatewayNode,
        *,
        clock: Callable[[], float] = time.time,
        window_s: int = WINDOW_S_DEFAULT,
        proxy: Any = None,
        inflight_max: int = 512,
    ) -> None:
        super().__init__(inflight_max=inflight_max)
        self.node = node
        self.clock = clock
        self.nonces = NonceCache(window_s)
        self.proxy = proxy  # node.gateway.proxy.AgentProxy; None answers 503 on hire/run_task
        self._router = Router(ENDPOINTS)
        self._arrivals: dict[int, int] = {}

    @property
    def replica(self) -> Replica:
        return self.node.replica

    @property
    def state(self) -> State:
        return self.node.replica.state

    async def handle(self, request: Request) -> Response:
        endpoint = self._router.match(request)
        if endpoint.auth != "public" and (
            endpoint.auth == "signed" or _has_signature(request.headers)
        ):
            try:
                request.signed = authenticate(
                    request.method,
                    request.target,
                    request.body,
                    request.headers,
                    int(self.clock()),
                    self.nonces,
                )
            except AuthError as exc:
                raise HttpError(401, exc.code, str(exc)) from None
            claimed = request.header("x-signer")
            if claimed is not None:
                try:
                    claimed = normalize_address(claimed.strip())
                except ValueError as exc:
                    raise HttpError(400, "invalid_header", f"X-Signer: {exc}") from None
                if claimed != request.signed.signer:
                    raise HttpError(
                        401,
                        "wrong_signer",
                        f"the request says it is signed by {claimed} but the signature is "
                        f"{request.signed.signer}'s: sign with {claimed}'s key",
                    )
        try:
            return await endpoint.handler(self, request)
        except OpRejected as exc:
            status = {"unauthorized": 403, "not_found": 404, "too_large": 413}.get(exc.code, 400)
            raise HttpError(status, exc.code, str(exc.args[0]), exc.field) from None

    # -- who acts ---------------------------------------------------------------------------

    def actor(self, request: Request, scope: str) -> tuple[str, bytes | None]:
        """The account a signed request acts for, and the id of the grant op that lets it (if
        any). State only: no I/O on the event loop."""
        assert request.signed is not None
        signer = request.signed.signer
        act_as = request.header("x-act-as")
        if act_as is None:
            return signer, None
        try:
            account = normalize_address(act_as.strip())
        except ValueError as exc:
            raise HttpError(400, "invalid_header", f"X-Act-As: {exc}") from None
        if account == signer:
            return signer, None
        with self.replica.lock:
            grant = self.state.grant(account, signer)
        if grant is None or grant["revoked"]:
            raise HttpError(
                403,
                "forbidden",
                f"{account} has granted no key to {signer} (or revoked it); the account can grant one with POST /key/grant",
            )
        if grant["expires_s"] < int(self.clock()):
            raise HttpError(403, "forbidden", f"the key grant from {account} has expired")
        if scope not in grant["scopes"]:
            raise HttpError(
                403,
                "forbidden",
                f"the key grant from {account} does not include scope {scope!r} (it has {', '.join(grant['scopes'])})",
            )
        return account, bytes.fromhex(grant["grant_op"])

    # -- writes -----------------------------------------------------------------------------

    async def mutate(self, request: Request) -> Mutation:
        """Turn a signed request into a request op and submit it."""
        assert request.signed is not None
        found = route_of(request.method, request.target)
        if found is None:
            raise HttpError(400, "invalid_request", "state-changing requests take no query string")
        route, params = found
        scope = SCOPE_OF_KIND.get(route.kind.partition(".")[0], "key")
        if request.header("x-act-as") is not None and scope == "key":
            raise HttpError(
                403, "forbidden", "keys cannot grant or revoke keys; sign as the account"
            )
        author, grant_id = self.actor(request, scope)
        grant = None
        if grant_id is not None:
            # The grant op travels inside the request op; reading it is store I/O.
            wire = await trio.to_thread.run_sync(self.replica.get_wire, [grant_id])
            if not wire:
                raise HttpError(
                    503, "unavailable", "this node has not stored the grant op yet; retry"
                )
            grant = wire[0]
        try:
            body_text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "invalid_json", "the request body must be UTF-8 JSON") from None
        hint = self._hints(route, params, author, body_text)
        op_body = request_op_body(
            net=self.replica.network,
            author=author,
            method=request.method,
            path=request.target,
            body_text=body_text,
            timestamp_s=request.signed.timestamp_s,
            nonce=request.signed.nonce,
            scheme=request.signed.scheme,
            hint=hint,
            grant=grant,
            logical=self._tick(request.signed.timestamp_s),
        )
        # Verify as every replica will: the gateway accepts exactly what the fog accepts.
        op = decode_op(op_body, request.signed.signature, self.replica.network)
        payload = State.check_op(op)
        self._precheck(op.kind, author, payload)
        result = await self.node.submit_checked([(op, payload)])
        if result.deferred:
            raise HttpError(
                401,
                "stale",
                f"the request is dated ahead of this node's clock ({result.deferred[0][1]}); check your clock",
            )
        return Mutation(op.kind, payload, "0x" + op.id.hex(), author)

    def _tick(self, second: int) -> int:
        """This gateway's arrival order among requests signed in ``second``."""
        count = self._arrivals.get(second, 0) + 1
        self._arrivals[second] = count
        if len(self._arrivals) > 4 * WINDOW_S_DEFAULT:  # only seconds inside the window matter
            for stale in sorted(self._arrivals)[: len(self._arrivals) // 2]:
                del self._arrivals[stale]
        return count

    def _hints(
        self, route: Route, params: dict[str, str], author: str, body_text: str
    ) -> dict[str, Any]:
        if not route.hints:
            return {}
        table = route.kind.partition(".")[0] + "s"
        try:
            body = json.loads(body_text or "{}")
        except ValueError:
            body = None  # the request op's own parse names the problem
        if not isinstance(body, dict):
            body = {}
        if "id" in params:
            entity_id = params["id"]
        elif isinstance(body.get("name"), str) and body["name"]:
            entity_id = build_id_of(author, body["name"])  # delete by name
        else:
            return {}  # the payload check reports the missing name
        with self.replica.lock:
            record = self.state.tables[table].get(entity_id)
            owner = self.state.owners.get(entity_id)
            if record is None or not record.exists:
                raise HttpError(404, "not_found", f"no {table[:-1]} {entity_id}")
            if owner != author:
                raise HttpError(
                    403, "forbidden", f"{table[:-1]} {entity_id} belongs to {owner}, not {author}"
                )
            hint: dict[str, Any] = {}
            if "name" in route.hints:
                hint["name"] = record.live_fields().get("name")
            if "tags" in route.hints:
                if "id" in params:  # disallow: the adds of one address
                    try:
                        address = normalize_address(str(body.get("address", "")))
                    except ValueError:
                        return hint  # the payload check names the field
                    hint["tags"] = self.state.allow_tags(table, entity_id, address)
                else:  # a delete takes the whole allow-list with it
                    hint["tags"] = self.state.allow_tags(table, entity_id, None)
        return hint

    def _precheck(self, kind: str, author: str, payload: dict[str, Any]) -> None:
        """Refusals that depend on this node's view (so only the gateway makes them)."""
        with self.replica.lock:
            if kind == "account.create" and self.state.account(author) is not None:
                raise HttpError(
                    409, "exists", f"account {author} already exists; use /account/update"
                )
            if kind == "instance.create":
                instance_id = instance_id_of(author, payload["name"])
                if self.state.instance(instance_id) is not None:
                    raise HttpError(
                        409,
                        "exists",
                        f"you already have an instance named {payload['name']!r} ({instance_id})",
                    )
            if kind in ("account.update", "account.delete") and self.state.account(author) is None:
                raise HttpError(
                    404, "not_found", f"no account {author}; create it with POST /account/create"
                )
            if kind in ("agent.update", "model.update", "agent.delete", "model.delete"):
                noun = kind.partition(".")[0]
                entity = build_id_of(author, payload["name"])
                if getattr(self.state, noun)(entity) is None:
                    raise HttpError(
                        404,
                        "not_found",
                        f"you have no {noun} named {payload['name']!r}; create it with POST /{noun}s/create",
                    )
            if kind == "key.revoke" and self.state.grant(author, payload["delegate"]) is None:
                raise HttpError(404, "not_found", f"you granted no key to {payload['delegate']}")
            if kind in ("agent.register", "model.register"):
                entity = build_id_of(author, payload["name"])
                if getattr(self.state, kind.partition(".")[0])(entity) is not None:
                    raise HttpError(
                        409,
                        "exists",
                        f"you already have a {kind[:5]} named {payload['name']!r}; use update",
                    )

    def view(self, fn: Callable[[], Any]) -> Any:
        with self.replica.lock:
            return fn()


def _has_signature(headers: dict[str, str]) -> bool:
    return "x-signature" in headers or headers.get("authorization", "").startswith("Signature ")


def _signer_scope(app: GatewayApp, request: Request, scope: str = "read") -> str:
    return app.actor(request, scope)[0]


# -- handlers -----------------------------------------------------------------------------------


async def ping(app: GatewayApp, request: Request) -> Response:
    return Response(200, {"ping": "pong"})


async def health(app: GatewayApp, request: Request) -> Response:
    return Response(200, {"status": "healthy", "version": __version__})


async def get_openapi(app: GatewayApp, request: Request) -> Response:
    return Response(200, openapi())


async def node_info(app: GatewayApp, request: Request) -> Response:
    return Response(200, app.node.info())


async def node_list(app: GatewayApp, request: Request) -> Response:
    nodes = app.view(app.state.nodes)
    return Response(200, {"count": len(nodes), "nodes": nodes})


def _account_or_404(app: GatewayApp, address: str) -> dict[str, Any]:
    account = app.view(lambda: app.state.account(address))
    if account is None:
        raise HttpError(
            404, "not_found", f"no account {address}; create it with POST /account/create"
        )
    return dict(account)


async def account_get(app: GatewayApp, request: Request) -> Response:
    address = normalize_address(request.params["address"])
    actor = _signer_scope(app, request)
    if actor != address:
        # The path names the key that must sign: another key is a failed authentication.
        raise HttpError(
            401,
            "wrong_signer",
            f"account {address} is readable with its own key (or a key it granted 'read'); "
            f"this request is signed by {actor}",
        )
    return Response(200, _account_or_404(app, address))


async def account_list(app: GatewayApp, request: Request) -> Response:
    accounts = app.view(app.state.accounts)
    return Response(200, {"count": len(accounts), "accounts": accounts})


async def account_write(app: GatewayApp, request: Request) -> Response:
    done = await app.mutate(request)
    if done.kind == "account.delete":
        return Response(200, {"op_id": done.op_id})
    status = 201 if done.kind == "account.create" else 200
    return Response(status, {"op_id": done.op_id, "account": _account_or_404(app, done.author)})


def _owned_instance(app: GatewayApp, request: Request, instance_id: str) -> dict[str, Any]:
    actor = _signer_scope(app, request)
    instance = app.view(lambda: app.state.instance(instance_id))
    if instance is None:
        raise HttpError(404, "not_found", f"no instance {instance_id}")
    if instance["instance_owner"] != actor:
        raise HttpError(403, "forbidden", f"instance {instance_id} is not {actor}'s")
    return dict(instance)


async def instance_create(app: GatewayApp, request: Request) -> Response:
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
    actor = _signer_scope(app, request)
    instances = app.view(lambda: app.state.instances(actor))
    return Response(200, {"success": True, "count": len(instances), "instances": instances})


async def instance_get(app: GatewayApp, request: Request) -> Response:
    return Response(200, _owned_instance(app, request, request.params["id"]))


def _owned_build(app: GatewayApp, request: Request) -> list[dict[str, Any]]:
    actor = _signer_scope(app, request)
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


def _listing_handlers(table: str, noun: str) -> dict[str, Handler]:
    id_field = f"{noun}_id"

    def visible(app: GatewayApp, entity: dict[str, Any], viewer: str | None) -> bool:
        return entity.get("access") != "private" or viewer in (
            entity["owner_id"],
            *entity.get("allow_list", []),
        )

    def viewer_of(app: GatewayApp, request: Request) -> str | None:
        return _signer_scope(app, request) if request.signed is not None else None

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


_AGENT = _listing_handlers("agents", "agent")
_MODEL = _listing_handlers("models", "model")


async def key_write(app: GatewayApp, request: Request) -> Response:
    done = await app.mutate(request)
    grant = app.view(lambda: app.state.grant(done.author, done.payload["delegate"]))
    return Response(200, {"op_id": done.op_id, "grant": grant})


async def key_list(app: GatewayApp, request: Request) -> Response:
    assert request.signed is not None
    keys = app.view(lambda: app.state.grants(request.signed.signer))  # type: ignore[union-attr]
    return Response(200, {"count": len(keys), "keys": keys})


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


# -- route table and OpenAPI --------------------------------------------------------------------


def _body_schema(kind: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    spec: Spec = {k: v for k, v in KINDS[kind].spec.items() if k not in drop}
    return json_schema(spec)


_EMPTY_BODY: Final = {"type": "object", "additionalProperties": False, "properties": {}}


def _endpoints() -> list[Endpoint]:
    e = Endpoint
    endpoints = [
        e("GET", "/ping", "ping", "Liveness: always pong", ping),
        e("GET", "/health", "health", "Health and version", health),
        e("GET", "/openapi.json", "openapi", "This document", get_openapi),
        e(
            "GET",
            "/node/info",
            "nodeInfo",
            "This node: address, peer id, network, state",
            node_info,
        ),
        e(
            "GET",
            "/node/list",
            "nodeList",
            "Every node known, with capacity and heartbeat",
            node_list,
        ),
        e(
            "POST",
            "/account/create",
            "accountCreate",
            "Create the signer's account",
            account_write,
            "signed",
            _body_schema("account.create", ("address",)),
            201,
            "accounts",
        ),
        e(
            "POST",
            "/account/update",
            "accountUpdate",
            "Update the signer's account",
            account_write,
            "signed",
            _body_schema("account.update", ("address",)),
            200,
            "accounts",
        ),
        e(
            "POST",
            "/account/delete",
            "accountDelete",
            "Delete the signer's account",
            account_write,
            "signed",
            _EMPTY_BODY,
            200,
            "accounts",
        ),
        e(
            "GET",
            "/account/list",
            "accountList",
            "All accounts",
            account_list,
            "signed",
            tag="accounts",
        ),
        e(
            "GET",
            "/account/{address}/get",
            "accountGet",
            "One account (only its own key or its delegates)",
            account_get,
            "signed",
            tag="accounts",
        ),
        e(
            "POST",
            "/instance/create",
            "instanceCreate",
            "Record an instance request from a Formfile",
            instance_create,
            "signed",
            _body_schema("instance.create", ("id",)),
            201,
            "instances",
        ),
        e(
            "GET",
            "/instance/list",
            "instanceList",
            "The signer's instances",
            instance_list,
            "signed",
            tag="instances",
        ),
        e(
            "GET",
            "/instance/{id}/get",
            "instanceGet",
            "One of the signer's instances",
            instance_get,
            "signed",
            tag="instances",
        ),
        e(
            "GET",
            "/instance/{id}/get_by_build_id",
            "instanceByBuild",
            "The signer's instances of a build",
            instance_by_build,
            "signed",
            tag="instances",
        ),
        e(
            "GET",
            "/instance/{id}/get_instance_ips",
            "instanceIps",
            "Mesh addresses of a build's instances",
            instance_ips,
            "signed",
            tag="instances",
        ),
    ]
    for verb in ("stop", "start", "delete"):
        endpoints.append(
            e(
                "POST",
                f"/instance/{{id}}/{verb}",
                f"instance{verb.title()}",
                f"{verb.title()} one of the signer's instances",
                instance_action,
                "signed",
                _EMPTY_BODY,
                200,
                "instances",
            )
        )
    for table, noun, handlers in (("agents", "agent", _AGENT), ("models", "model", _MODEL)):
        title = noun.title()
        endpoints += [
            e(
                "GET",
                f"/{table}",
                f"{noun}List",
                f"Public {table} (and private ones the signer may see)",
                handlers["list"],
                "optional",
                tag=table,
            ),
            e(
                "GET",
                f"/{table}/{{id}}",
                f"{noun}Get",
                f"One {noun}",
                handlers["get"],
                "optional",
                tag=table,
            ),
            e(
                "POST",
                f"/{table}/create",
                f"{noun}Create",
                f"Publish a {noun}",
                handlers["write"],
                "signed",
                _body_schema(f"{noun}.register", ("id",)),
                201,
                table,
            ),
            e(
                "POST",
                f"/{table}/update",
                f"{noun}Update",
                f"Update one of the signer's {table}",
                handlers["write"],
                "signed",
                _body_schema(f"{noun}.update", ("id",)),
                200,
                table,
            ),
            e(
                "POST",
                f"/{table}/delete",
                f"{noun}Delete",
                f"Delete one of the signer's {table}",
                handlers["write"],
                "signed",
                _body_schema(f"{noun}.delete", ("id",)),
                200,
                table,
            ),
            e(
                "POST",
                f"/{table}/{{id}}/allow",
                f"{noun}Allow",
                f"Let an address use a private {noun}",
                handlers["write"],
                "signed",
                _body_schema(f"{noun}.allow", ("id", "name")),
                200,
                table,
            ),
            e(
                "POST",
                f"/{table}/{{id}}/disallow",
                f"{noun}Disallow",
                f"Take an address off a {noun}'s allow-list",
                handlers["write"],
                "signed",
                _body_schema(f"{noun}.disallow", ("id", "name", "tags")),
                200,
                table,
            ),
        ]
        del title
    endpoints += [
        e(
            "POST",
            "/agents/{id}/hire",
            "agentHire",
            "Call an agent (proxied to its endpoint, streamed back)",
            _agent_call("hire"),
            "signed",
            None,
            200,
            "agents",
        ),
        e(
            "POST",
            "/agents/{id}/run_task",
            "agentRunTask",
            "Run a task on an agent (proxied, streamed back)",
            _agent_call("run_task"),
            "signed",
            None,
            200,
            "agents",
        ),
        e(
            "POST",
            "/key/grant",
            "keyGrant",
            "Grant a delegated key (scopes, spend cap, expiry)",
            key_write,
            "signed",
            _body_schema("key.grant"),
            200,
            "keys",
        ),
        e(
            "POST",
            "/key/revoke",
            "keyRevoke",
            "Revoke a delegated key",
            key_write,
            "signed",
            _body_schema("key.revoke"),
            200,
            "keys",
        ),
        e("GET", "/key/list", "keyList", "The signer's key grants", key_list, "signed", tag="keys"),
    ]
    return endpoints


ENDPOINTS: Final = _endpoints()

_ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "stable error code"},
        "message": {"type": "string", "description": "what went wrong and how to fix it"},
        "field": {"type": "string", "description": "the request field at fault"},
    },
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ENDPOINTS`` (served at ``/openapi.json``)."""
    paths: dict[str, dict[str, Any]] = {}
    error_ref = {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    }
    for endpoint in ENDPOINTS:
        operation: dict[str, Any] = {
            "operationId": endpoint.name,
            "summary": endpoint.summary,
            "tags": [endpoint.tag],
            "responses": {
                str(endpoint.status): {
                    "description": "success",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": {"description": "the request is invalid", **error_ref},
                "404": {"description": "no such route or entity", **error_ref},
                "405": {"description": "the path exists with another method", **error_ref},
                "503": {"description": "busy or not ready: retry", **error_ref},
            },
        }
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {
                    "type": "string",
                    "pattern": f"^{_ADDRESS if name == 'address' else '[0-9a-f]{40,64}'}$",
                },
            }
            for name in re.findall(r"\{(\w+)\}", endpoint.template)
        ]
        if parameters:
            operation["parameters"] = parameters
        if endpoint.auth != "public":
            operation["security"] = [{"signedRequest": []}] + (
                [{}] if endpoint.auth == "optional" else []
            )
            operation["responses"]["401"] = {"description": "missing or bad signature", **error_ref}
            operation["responses"]["403"] = {"description": "not yours", **error_ref}
        if endpoint.method == "POST":
            operation["responses"]["409"] = {"description": "already exists", **error_ref}
            operation["responses"]["413"] = {"description": "body too large", **error_ref}
            schema = endpoint.request if endpoint.request is not None else {"type": "object"}
            operation["requestBody"] = {
                "required": endpoint.request is not None and endpoint.request is not _EMPTY_BODY,
                "content": {"application/json": {"schema": schema}},
            }
        paths.setdefault(f"/v1{endpoint.template}", {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "formation-node gateway",
            "version": __version__,
            "description": (
                "Every route also answers without the /v1 prefix. Signed requests carry "
                "X-Message (the canonical line) and X-Signature (EIP-191 personal_sign); "
                "see docs/api.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {
                "signedRequest": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Signature",
                    "description": (
                        "0x + 65-byte EIP-191 signature of the X-Message line "
                        "formation:v1:METHOD:path?query:sha256hex(body):unix_s:nonce"
                    ),
                }
            },
        },
    }


async def serve_gateway(
    app: GatewayApp, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` with Hypercorn's Trio worker; ``task_status`` gets the bound URL."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("formation.gateway.http")
    config.keep_alive_timeout = 30
    config.read_timeout = 30  # a client that stops sending (slowloris) is cut off
    config.h11_max_incomplete_size = 16 * 1024  # request line + headers
    config.backlog = 128
    config.graceful_timeout = 2

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            task_status.started((binds or [""])[0])

    await serve(app, config, task_status=_Status())  # type: ignore[arg-type]
