"""``form model``: publish your models, find others'."""

from __future__ import annotations

import argparse
from typing import Any, Final

from node.client.api import GatewayClient
from node.client.cli._common import Commands, UsageError, _col
from node.client.cli._listing import _Listing, _publish, listing_commands


def _model_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": args.name,
        # Explicit on every publish, as for agents: without --private the model is public.
        "access": "private" if args.private else "public",
    }
    if args.description is not None:
        spec["description"] = args.description
    if args.model_type is not None:
        spec["model_type"] = args.model_type
    for option, name, value in (
        ("--parameters", "parameters", args.parameters),
        ("--context-length", "context_length", args.context_length),
    ):
        if value is not None:
            if value < 0:
                raise UsageError(f"{option} cannot be negative")
            spec[name] = value
    if args.price_per_1m_tokens is not None:
        if args.price_per_1m_tokens < 0:
            raise UsageError("--price-per-1m-tokens cannot be negative")
        spec["pricing"] = {"price_per_1m_tokens": args.price_per_1m_tokens}
    return spec


_MODELS: Final = _Listing(
    noun="model",
    columns=(
        _col("MODEL ID", "model_id"),
        _col("NAME", "name"),
        _col("OWNER", "owner_id"),
        _col("TYPE", "model_type"),
        _col("PARAMETERS", "parameters"),
        _col("CONTEXT", "context_length"),
        _col("ACCESS", "access"),
        _col("PRICE/1M TOKENS", "pricing", "price_per_1m_tokens"),
    ),
    spec=_model_spec,
    list_=GatewayClient.model_list,
    get=GatewayClient.model_get,
    create=GatewayClient.model_create,
    update=GatewayClient.model_update,
    delete=GatewayClient.model_delete,
    allow=GatewayClient.model_allow,
    disallow=GatewayClient.model_disallow,
)


def register(commands: Commands) -> None:
    model = commands.branch("model", "models: publish yours, find others'")
    publish = model.leaf(
        "publish",
        _publish(_MODELS),
        "list a model on the marketplace (again with the same --name: update it)",
    )
    publish.add_argument("--name", required=True, metavar="N")
    publish.add_argument("--description", metavar="D")
    publish.add_argument("--model-type", metavar="T", help="e.g. llm, embedding")
    publish.add_argument("--parameters", type=int, metavar="N", help="parameter count")
    publish.add_argument("--context-length", type=int, metavar="N", help="in tokens")
    publish.add_argument(
        "--price-per-1m-tokens", type=int, metavar="N", help="credits per million tokens"
    )
    publish.add_argument("--private", action="store_true", help="only allowed addresses may use it")
    listing_commands(model, _MODELS, "use")
