"""Billing routes: mint and move credits, read a balance (``node.ledger.billing``, D18, D22).

``POST /billing/credits/mint`` and ``POST /billing/credits/transfer`` take
``{"to", "amount", "idempotency_key", "node"}``. The signed request *is* the order: it travels,
with the user's own signature, inside the chain op of the node it names (``node``), which
makes its key take effect in that one chain only: a copy replayed through another gateway
cannot move credits twice. The credits service (``node.credits.service``) decides and writes;
the answer comes once the chain op is stored. A mint by anyone but the network's genesis
issuers is 403; a spend the rights in reach cannot cover, after asking the peers that hold
them for at most ``ASK_WAIT_S``, is 402 with ``required`` and ``available``; an order whose
key was carried out before answers that outcome again (``replayed``), and the same key with
another recipient or amount is 409. Refusals write nothing.

``GET /billing/balance/{address}`` is public: the ledger is replicated to every node and each
movement is a signed op any node verifies, so a balance is no secret from the fog.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from node.credits.service import ChainBusy, KeyReused
from node.gateway.endpoint import Endpoint
from node.gateway.http import HttpError, Request, Response
from node.identity.keys import normalize_address
from node.ledger import billing
from node.ledger.schema import json_schema

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS"]


def _service(app: GatewayApp) -> Any:
    if app.billing is None:
        raise HttpError(503, "unavailable", "this gateway's node does not serve billing")
    return app.billing


def _precheck(app: GatewayApp, request: Request) -> None:
    """The refusals that need words the payload check cannot give: a body that is not an
    object, and a missing ``node`` (say which node this is)."""
    try:
        body = json.loads(request.body.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError):
        return  # the request op's own parse names the problem
    if not isinstance(body, dict):
        raise HttpError(
            400,
            "invalid_json",
            'the body must be a JSON object {"to", "amount", "idempotency_key", "node"}',
        )
    if "node" not in body:
        raise HttpError(
            400,
            "invalid_payload",
            "name the node that carries the order out, inside what you sign: "
            f'"node": "{_service(app).address}" for this gateway\'s node (GET /v1/node/info); '
            "the key of an order bound to no node could be spent again through another gateway",
            "node",
        )


async def credits_order(app: GatewayApp, request: Request) -> Response:
    service = _service(app)
    _precheck(app, request)
    order = app.signed_order(request)
    try:
        outcome = await service.carry_out(order)
    except billing.InsufficientCredits as refused:
        return Response(
            402,
            {
                "error": "insufficient_credits",
                "message": str(refused.args[0]),
                "field": "amount",
                "required": refused.required,
                "available": refused.available,
                "available_here": refused.available_here,
            },
        )
    except KeyReused as exc:
        raise HttpError(409, exc.code, str(exc.args[0]), exc.field) from None
    except ChainBusy as exc:
        raise HttpError(503, exc.code, str(exc.args[0])) from None
    return Response(200, outcome.to_json())


async def balance_get(app: GatewayApp, request: Request) -> Response:
    address = normalize_address(request.params["address"])
    return Response(
        200, {"address": address, **app.view(lambda: billing.balance(app.state, address))}
    )


_REFUSALS = (
    (402, "insufficient credits: the rights in reach do not cover the amount; nothing changed"),
    (409, "the idempotency key was used for a different movement"),
)

ROWS = [
    Endpoint(
        method="POST",
        path="/billing/credits/mint",
        handler=credits_order,
        operation_id="creditsMint",
        summary="Mint credits to an account (the network's genesis issuers only)",
        auth="signed",
        body_schema=json_schema(billing.ORDER_SPECS["billing.order.mint"]),
        tag="billing",
        responses=_REFUSALS[1:],
    ),
    Endpoint(
        method="POST",
        path="/billing/credits/transfer",
        handler=credits_order,
        operation_id="creditsTransfer",
        summary="Move credits from the signer's account to another",
        auth="signed",
        body_schema=json_schema(billing.ORDER_SPECS["billing.order.transfer"]),
        tag="billing",
        responses=_REFUSALS,
    ),
    Endpoint(
        method="GET",
        path="/billing/balance/{address}",
        handler=balance_get,
        operation_id="creditsBalance",
        summary="An account's credits: available, held, spent, earned",
        tag="billing",
    ),
]
