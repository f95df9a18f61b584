"""DNS routes: point a vanity name at one of your builds, withdraw it, list the names.

``POST /dns/add`` and ``POST /dns/remove`` are request ops (``dns.add``, ``dns.remove``,
``node.ledger.names``). Which add counts is decided when reading (the first adder that owns
the build holds the domain), so an add that would not count is refused here first, with what
to fix, and changes nothing: the build must be the signer's (a build it asked for, or one its
instances boot) and the domain must not be held by another account. ``GET /dns/list`` is
public: every name it lists is answered by the DNS server anyway.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from node.gateway.endpoint import Endpoint, kind_schema
from node.gateway.http import HttpError, Request, Response
from node.ledger.names import holders_of, names_of, zone_name

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS"]


def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        return {}  # mutate() names the problem
    return body if isinstance(body, dict) else {}


def _owns_build(state: Any, account: str, build_id: str) -> bool:
    if state.owners.get(build_id) == account:
        return True
    return any(i["instance_owner"] == account for i in state.instances_by_build(build_id))


async def dns_add(app: GatewayApp, request: Request) -> Response:
    body = _body(request)
    domain, build_id = body.get("domain"), body.get("build_id")
    if isinstance(domain, str) and isinstance(build_id, str):
        author = app.actor(request, "instance")[0]
        name = zone_name(domain)

        def check() -> tuple[bool, str | None]:
            held = holders_of(app.state).get(name)
            return _owns_build(app.state, author, build_id.lower()), held[0] if held else None

        owns, holder_account = app.view(check)
        if not owns:
            raise HttpError(
                403,
                "forbidden",
                f"build {build_id} is not {author}'s (no build request or instance of yours "
                "names it); a name can point only at your own build",
                "build_id",
            )
        if holder_account is not None and holder_account != author:
            raise HttpError(
                409,
                "exists",
                f"domain {name} is held by {holder_account}; choose another domain",
                "domain",
            )
    return await _written(app, request)


async def dns_remove(app: GatewayApp, request: Request) -> Response:
    return await _written(app, request)


async def _written(app: GatewayApp, request: Request) -> Response:
    """Submit the request's op; answer the domain and the build it names now (None once
    removed)."""
    done = await app.mutate(request)
    name = zone_name(done.payload["domain"])
    return Response(
        200,
        {
            "op_id": done.op_id,
            "domain": name,
            "build_id": app.view(lambda: names_of(app.state).get(name)),
        },
    )


async def dns_list(app: GatewayApp, request: Request) -> Response:
    names = app.view(lambda: names_of(app.state))
    rows = [{"domain": d, "build_id": b} for d, b in names.items()]
    return Response(200, {"count": len(rows), "names": rows})


ROWS = [
    Endpoint(
        method="POST",
        path="/dns/add",
        handler=dns_add,
        operation_id="dnsAdd",
        summary="Point a vanity name (served as <domain>.fog) at one of your builds",
        auth="signed",
        body_schema=kind_schema("dns.add"),
        tag="dns",
    ),
    Endpoint(
        method="POST",
        path="/dns/remove",
        handler=dns_remove,
        operation_id="dnsRemove",
        summary="Withdraw your vanity name",
        auth="signed",
        body_schema=kind_schema("dns.remove"),
        tag="dns",
    ),
    Endpoint(
        method="GET",
        path="/dns/list",
        handler=dns_list,
        operation_id="dnsList",
        summary="Every vanity name and the build it answers",
        tag="dns",
    ),
]
