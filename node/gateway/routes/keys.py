"""Delegated-key routes: grant and revoke a key that may act for the signer's account, list them.

Only the account itself may grant or revoke (``GatewayApp.mutate`` refuses a delegated key
here); how a granted key then acts for the account is the write path's (``X-Act-As``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.gateway.endpoint import Endpoint, kind_schema
from node.gateway.http import Request, Response

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS"]


async def key_write(app: GatewayApp, request: Request) -> Response:
    done = await app.mutate(request)
    grant = app.view(lambda: app.state.grant(done.author, done.payload["delegate"]))
    return Response(200, {"op_id": done.op_id, "grant": grant})


async def key_list(app: GatewayApp, request: Request) -> Response:
    assert request.signed is not None
    keys = app.view(lambda: app.state.grants(request.signed.signer))  # type: ignore[union-attr]
    return Response(200, {"count": len(keys), "keys": keys})


ROWS = [
    Endpoint(
        method="POST",
        path="/key/grant",
        handler=key_write,
        operation_id="keyGrant",
        summary="Grant a delegated key (scopes, spend cap, expiry)",
        auth="signed",
        body_schema=kind_schema("key.grant"),
        tag="keys",
    ),
    Endpoint(
        method="POST",
        path="/key/revoke",
        handler=key_write,
        operation_id="keyRevoke",
        summary="Revoke a delegated key",
        auth="signed",
        body_schema=kind_schema("key.revoke"),
        tag="keys",
    ),
    Endpoint(
        method="GET",
        path="/key/list",
        handler=key_list,
        operation_id="keyList",
        summary="The signer's key grants",
        auth="signed",
        tag="keys",
    ),
]
