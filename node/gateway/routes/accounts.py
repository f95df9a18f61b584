"""Account routes: create, update and delete the signer's account; read accounts.

An account's address is its owner's key, so writes name no account: the signer's (or, with a
delegated key, the account that granted it) is the one written. Reading one account needs its
own key or a key it granted ``read``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.gateway.endpoint import EMPTY_BODY, Endpoint, kind_schema
from node.gateway.http import HttpError, Request, Response
from node.identity.keys import normalize_address

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS"]


def _account_or_404(app: GatewayApp, address: str) -> dict[str, Any]:
    account = app.view(lambda: app.state.account(address))
    if account is None:
        raise HttpError(
            404, "not_found", f"no account {address}; create it with POST /account/create"
        )
    return dict(account)


async def account_get(app: GatewayApp, request: Request) -> Response:
    address = normalize_address(request.params["address"])
    actor = app.actor(request, "read")[0]
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


ROWS = [
    Endpoint(
        method="POST",
        path="/account/create",
        handler=account_write,
        operation_id="accountCreate",
        summary="Create the signer's account",
        auth="signed",
        body_schema=kind_schema("account.create", drop=("address",)),
        status=201,
        tag="accounts",
    ),
    Endpoint(
        method="POST",
        path="/account/update",
        handler=account_write,
        operation_id="accountUpdate",
        summary="Update the signer's account",
        auth="signed",
        body_schema=kind_schema("account.update", drop=("address",)),
        tag="accounts",
    ),
    Endpoint(
        method="POST",
        path="/account/delete",
        handler=account_write,
        operation_id="accountDelete",
        summary="Delete the signer's account",
        auth="signed",
        body_schema=EMPTY_BODY,
        tag="accounts",
    ),
    Endpoint(
        method="GET",
        path="/account/list",
        handler=account_list,
        operation_id="accountList",
        summary="All accounts",
        auth="signed",
        tag="accounts",
    ),
    Endpoint(
        method="GET",
        path="/account/{address}/get",
        handler=account_get,
        operation_id="accountGet",
        summary="One account (only its own key or its delegates)",
        auth="signed",
        tag="accounts",
    ),
]
