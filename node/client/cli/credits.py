"""``form credits``: mint (issuers only), transfer and read credits (``docs/api.md``, Billing).

Every movement carries an idempotency key: ``--idempotency-key`` or a fresh one, printed so a
retry after a timeout can reuse it (a retry with the same key answers the first outcome and
moves nothing). The order names the gateway's node (``--node`` to name another), which is the
node that carries it out.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from node.client.cli._common import Commands, UsageError, _address, _fields, _json_out, _Session

_KEY_HELP = (
    "the movement's idempotency key (1-128 of A-Z a-z 0-9 . _ : / -); default: a fresh one, "
    "printed. Retry a failed or timed-out command with the same key: it then moves nothing "
    "twice"
)
_ORDER_EPILOG = (
    "A transfer the gateway's node cannot cover from the rights it holds asks the nodes that "
    "hold the rest (at most 2 s); if they do not cover it, the command fails with "
    "insufficient_credits (HTTP 402) and nothing changes."
)


def _amount(text: str) -> int:
    if not text.isdigit() or int(text) < 1 or int(text) > 2**62:
        raise UsageError(f"--amount must be a whole number of credits, 1..2^62, got {text!r}")
    return int(text)


def _order(session: _Session, kind: str) -> int:
    args = session.args
    to = _address(args.to, "--to")
    amount = _amount(args.amount)
    node = _address(args.node, "--node") if args.node else None
    key = args.idempotency_key or f"form-{secrets.token_hex(8)}"
    client = session.client()
    send = client.credits_mint if kind == "mint" else client.credits_transfer
    result = send(to, amount, key, node=node)
    if args.json:
        _json_out(result)
        return 0
    _show(result, "minted" if kind == "mint" else "moved")
    return 0


def _show(result: Any, verb: str) -> None:
    if not isinstance(result, Mapping):
        _fields(result)
        return
    if result.get("replayed"):
        print(f"already done (key {result.get('idempotency_key')}): nothing changed")
    print(
        f"{verb} {result.get('amount')} credits to {result.get('to')} "
        f"(op {result.get('op_id')}, node {result.get('node')}, seq {result.get('seq')})"
    )
    if not result.get("replayed"):
        print(f"idempotency key {result.get('idempotency_key')} (reuse it to retry safely)")


def cmd_credits_mint(session: _Session) -> int:
    return _order(session, "mint")


def cmd_credits_transfer(session: _Session) -> int:
    return _order(session, "transfer")


def cmd_credits_balance(session: _Session) -> int:
    args = session.args
    address = _address(args.address, "--address") if args.address else session.account()
    result = session.client(signed=False).credits_balance(address)
    if args.json:
        _json_out(result)
    else:
        _fields(result)
    return 0


def register(commands: Commands) -> None:
    credits = commands.branch("credits", "credits: mint (issuers), transfer, balance")
    for kind, func, help_text in (
        (
            "mint",
            cmd_credits_mint,
            "mint credits to an account (only the network's genesis issuers may; on the "
            "local network: --keystore bootstrap/local/issuer-keystore.json, password local)",
        ),
        ("transfer", cmd_credits_transfer, "move credits from your account to another"),
    ):
        leaf = credits.leaf(kind, func, help_text)
        leaf.epilog = _ORDER_EPILOG if kind == "transfer" else None
        leaf.add_argument("--to", required=True, metavar="ADDRESS", help="the receiving account")
        leaf.add_argument(
            "--amount", required=True, metavar="N", help="whole credits (the smallest unit)"
        )
        leaf.add_argument("--idempotency-key", metavar="KEY", help=_KEY_HELP)
        leaf.add_argument(
            "--node",
            metavar="ADDRESS",
            help="the node that carries it out (default: the gateway's own node)",
        )
    balance = credits.leaf(
        "balance", cmd_credits_balance, "an account's credits: available, held, spent, earned"
    )
    balance.add_argument(
        "--address",
        metavar="ADDRESS",
        help="whose (default: your key's account, which unlocks your keystore)",
    )
