"""The gateway's write path: ``GatewayApp``, who a request acts for, and how a write is stored.

Theory of operation
-------------------
The gateway is the node's only front door. ``GatewayApp`` is its ASGI application: the HTTP
face (``node.gateway.http``) turns a request into a ``Request``; ``handle`` finds its row in
the route table (``node.gateway.routes``), authenticates it if the row asks
(``node.gateway.auth``), calls the row's handler and maps a state refusal to its status. This
module holds what every handler shares: ``actor`` (whom a signed request acts for), ``mutate``
(the only way a handler writes) and ``view`` (state reads under the replica's lock).

**Reads** come straight from the replicated state. Public ones (health, nodes, the agent and
model listings) need no signature; private ones (accounts, instances, keys) need a signed
request and show the signer only what it owns.

**Writes** never become node-signed ops: the signed request itself becomes a *request op*
(``node.ledger.request_op``), verified here exactly as every other replica will verify it,
stored durably (fsync) and gossiped; only then does the client get its answer. So an answer of
``200``/``201`` means "durable here and on its way to the fog", and nothing a client is told
was accepted can be lost by a crash of this node. Before that, ``_hints`` adds what the op
needs from this node's state (an entity's name, the allow-list tags a delete takes along) and
``_precheck`` makes the refusals only this node's view can make (``409`` for a create of
something that exists, ``404`` for an update of something that does not).

**Delegated keys.** A request signed by a key the account granted (``POST /key/grant``) acts
for that account when its signed line names it (``formation:v2``, see ``acting_for``; an
``X-Act-As`` header outside the signature is refused) and the grant covers the route's scope; the
gateway embeds the grant op in the request op so other replicas can check it. Revoked or
expired grants are refused here.

**Errors** (shape and codes: ``node.gateway.http``): ``401`` for anything about the signature
(nothing is applied), ``400`` for a request the state refuses (the message names the field),
``403`` for someone else's entity, ``404``, ``409``; ``503 not_stored`` when the store could
not make the write durable (nothing of it was applied; the client may retry).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from node.gateway.auth import WINDOW_S_DEFAULT, AuthError, NonceCache, authenticate
from node.gateway.endpoint import Endpoint
from node.gateway.http import AsgiApp, HttpError, Request, Response, Router
from node.gateway.routes import ENDPOINTS
from node.identity.keys import normalize_address
from node.ledger.op import Op, OpRejected, decode_op
from node.ledger.request_op import (
    SCOPE_OF_KIND,
    Route,
    request_op_body,
    route_of,
)
from node.ledger.state import State, build_id_of, instance_id_of
from node.replica import CommitFailed, Replica, SubmitResult

__all__ = ["GatewayApp", "GatewayNode", "Mutation", "serve_gateway"]

# Routes matched ahead of their handler (for the body limit) that are kept at most; the
# gateway has at most 512 requests in flight, so this is only reached by bodies never read.
MATCHED_KEPT_MAX = 2048


class GatewayNode(Protocol):
    """What the gateway needs from the node it runs in."""

    replica: Replica

    def info(self) -> dict[str, Any]: ...

    async def submit_checked(self, ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult: ...


@dataclass(frozen=True)
class Mutation:
    """A write the gateway stored and gossiped: what it did and for whom."""

    kind: str
    payload: dict[str, Any]
    op_id: str  # 0x + hex
    author: str  # the account acted for (the signer, or the account that granted its key)


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
        billing: Any = None,
        inflight_max: int = 512,
    ) -> None:
        super().__init__(inflight_max=inflight_max)
        self.node = node
        # node.credits.service.CreditsService; None answers 503 on the billing writes.
        self.billing = billing
        self.clock = clock
        self.nonces = NonceCache(window_s)
        self.proxy = proxy  # node.gateway.proxy.AgentProxy; None answers 503 on hire/run_task
        self.endpoints = ENDPOINTS
        self._router = Router(self.endpoints)
        # Routes matched for their body limit, kept for the handler of the same request so a
        # request is routed once (a pure function of method and path, so a stale entry is
        # still right). Bounded: the in-flight bound keeps it small; cleared if it ever grows.
        self._matched: dict[tuple[str, str], tuple[Endpoint, dict[str, str]]] = {}
        self._arrivals: dict[int, int] = {}

    @property
    def replica(self) -> Replica:
        return self.node.replica

    @property
    def state(self) -> State:
        return self.node.replica.state

    def body_bytes_max(self, method: str, path: str) -> int:
        # Only a row that declares a raw body (the blob upload) reads more than the JSON limit.
        probe = Request(method, path, path, {}, b"")
        try:
            endpoint = self._router.match(probe)
        except HttpError:
            return super().body_bytes_max(method, path)
        if len(self._matched) >= MATCHED_KEPT_MAX:
            self._matched.clear()
        self._matched[(method, path)] = (endpoint, probe.params)
        return endpoint.body_bytes_max or super().body_bytes_max(method, path)

    async def handle(self, request: Request) -> Response:
        matched = self._matched.pop((request.method, request.path), None)
        if matched is None:
            endpoint = self._router.match(request)
        else:
            endpoint, params = matched
            request.params = dict(params)
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
            claimed = _header_address(request, "X-Signer")
            if claimed is not None and claimed != request.signed.signer:
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
        account = self.acting_for(request)
        if account is None:
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

    def acting_for(self, request: Request) -> str | None:
        """The account a delegated key's signed line acts for, or None for the signer's own.

        The account must be inside the signature (the ``formation:v2`` line): an ``X-Act-As``
        header the line does not say, or says otherwise, is refused with 401, since anyone on
        the way could have added or altered it.
        """
        assert request.signed is not None
        signer, signed_as = request.signed.signer, request.signed.act_as
        claimed = _header_address(request, "X-Act-As")
        if claimed is not None:
            if signed_as is None and claimed != signer:
                raise HttpError(
                    401,
                    "act_as_unsigned",
                    f"X-Act-As names {claimed} but the signed message does not: a delegated key "
                    "signs the formation:v2 line, which ends with the account it acts for "
                    "(docs/api.md section 3)",
                )
            if signed_as is not None and claimed != signed_as:
                raise HttpError(
                    401,
                    "act_as_mismatch",
                    f"X-Act-As says {claimed}, the signed message acts for {signed_as}",
                )
        if signed_as == signer:
            raise HttpError(
                401,
                "malformed_message",
                "the signed message acts for its own signer: sign the formation:v1 line instead",
            )
        return signed_as

    # -- writes -----------------------------------------------------------------------------

    async def mutate(self, request: Request) -> Mutation:
        """Turn a signed request into a request op and submit it."""
        assert request.signed is not None
        found = route_of(request.method, request.target)
        if found is None:
            raise HttpError(400, "invalid_request", "state-changing requests take no query string")
        route, params = found
        scope = SCOPE_OF_KIND.get(route.kind.partition(".")[0], "key")
        if scope == "key" and self.acting_for(request) is not None:
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
        body_text = _body_text(request)
        hint = self._hints(route, params, author, body_text)
        # Verify as every replica will: the gateway accepts exactly what the fog accepts.
        op = self._request_op(request, author, body_text, hint=hint, grant=grant)
        payload = State.check_op(op)
        self._precheck(op.kind, author, payload)
        try:
            result = await self.node.submit_checked([(op, payload)])
        except CommitFailed as exc:
            raise HttpError(503, "not_stored", str(exc)) from None
        if result.deferred:
            raise HttpError(
                401,
                "stale",
                f"the request is dated ahead of this node's clock ({result.deferred[0][1]}); check your clock",
            )
        return Mutation(op.kind, payload, "0x" + op.id.hex(), author)

    def signed_order(self, request: Request) -> Op:
        """A billing order: the signed request itself as a request op, verified as every
        replica will verify it inside the chain op that carries it out. Only the account's own
        key signs one (no delegated key spends or mints)."""
        assert request.signed is not None
        if self.acting_for(request) is not None:
            raise HttpError(
                403,
                "forbidden",
                "billing orders are signed by the account's own key; a delegated key cannot "
                "mint or move credits (sign as the account)",
            )
        return self._request_op(request, request.signed.signer, _body_text(request))

    def _request_op(
        self,
        request: Request,
        author: str,
        body_text: str,
        *,
        hint: dict[str, Any] | None = None,
        grant: tuple[bytes, bytes] | None = None,
    ) -> Op:
        """The signed request as a request op (with this gateway's arrival tick), decoded and
        verified as every replica decodes it."""
        assert request.signed is not None
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
        return decode_op(op_body, request.signed.signature, self.replica.network)

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


async def serve_gateway(
    app: GatewayApp, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` with the gateway's own HTTP/1.1 server (``node.gateway.server``, D20);
    ``task_status`` gets the bound URL."""
    from node.gateway.server import serve_http

    await serve_http(app, host, port, task_status=task_status)


def _header_address(request: Request, name: str) -> str | None:
    """The address a header names (normalized), None without it, 400 if it is no address."""
    text = request.header(name.lower())
    if text is None:
        return None
    try:
        return normalize_address(text.strip())
    except ValueError as exc:
        raise HttpError(400, "invalid_header", f"{name}: {exc}") from None


def _body_text(request: Request) -> str:
    try:
        return request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_json", "the request body must be UTF-8 JSON") from None
