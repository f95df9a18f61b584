"""``/formation/rights/1.0.0``: ask a node for some of an account's spend rights.

A spend that the node's own rights cannot cover asks the peers that hold them
(``node.ledger.billing.plan_spend``). One ask is one fresh stream with one JSON frame each way:

    ask:    {"account": "0x…", "amount": N, "have": K}
    answer: {"granted": G, "seq": S, "ops": [[body text, "0x" + sig hex], …]}
            or {"error": code, "message": text}

``have`` is the last seq of the granter's chain the asker has evaluated; the answer carries the
granter's chain ops after it, up to and including its ``billing.grant`` (seq ``S``), so the
asker can evaluate the grant and accept it at once instead of waiting for gossip. At most
``OPS_MAX`` ops and ``OPS_BYTES_MAX`` bytes travel: a longer gap is left to gossip and the
grant is accepted when it arrives. ``granted`` 0 (with no ``seq``) means the node holds none
of what was asked. The answer's ops are ordinary signed ops: the asker verifies each as it
would any peer's, so a lying granter can only waste the asker's time. Only nodes announced in
the fog are answered (``is_node``); the exchange is bounded in time (``TIMEOUT_S``) and in
concurrency (``CONCURRENT_MAX`` inbound asks).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the wire parts are imported by the credits service without libp2p
    from node.p2p.transport import Exchange, Transport

__all__ = [
    "CONCURRENT_MAX",
    "OPS_BYTES_MAX",
    "OPS_MAX",
    "PROTOCOL",
    "TIMEOUT_S",
    "Granted",
    "RightsAsk",
    "ask",
    "parse_answer",
    "parse_ask",
    "register",
]

PROTOCOL: Final = "/formation/rights/1.0.0"
# The granter's chain ops one answer carries at most (the grant included), and their bytes.
OPS_MAX: Final = 32
OPS_BYTES_MAX: Final = 1024 * 1024
_ASK_BYTES_MAX: Final = 1024
# An op body is at most 256 KiB (node.ledger.op), a signature 132 characters; JSON escapes.
_ANSWER_BYTES_MAX: Final = 2 * OPS_BYTES_MAX + 512 * 1024
TIMEOUT_S: Final = 5.0
CONCURRENT_MAX: Final = 16
_ADDRESS: Final = re.compile(r"0x[0-9a-f]{40}")
_SIG: Final = re.compile(r"0x[0-9a-f]{130}")
_AMOUNT_MAX: Final = 2**62


@dataclass(frozen=True)
class RightsAsk:
    account: str
    amount: int
    have: int


@dataclass(frozen=True)
class Granted:
    """What a granter answered: how much, its grant's seq, and its chain ops to ingest."""

    granted: int
    seq: int | None
    ops: list[tuple[bytes, bytes]]


def parse_ask(raw: bytes) -> RightsAsk | None:
    try:
        ask = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(ask, dict) or set(ask) != {"account", "amount", "have"}:
        return None
    account, amount, have = ask["account"], ask["amount"], ask["have"]
    if not (isinstance(account, str) and _ADDRESS.fullmatch(account)):
        return None
    if type(amount) is not int or not 0 < amount <= _AMOUNT_MAX:
        return None
    if type(have) is not int or not 0 <= have < 2**48:
        return None
    return RightsAsk(account, amount, have)


def parse_answer(raw: bytes) -> Granted:
    """The granter's answer, or ``ValueError`` naming what is wrong with it."""
    reply = json.loads(raw)
    if not isinstance(reply, dict):
        raise ValueError("the answer is not a JSON object")
    if "error" in reply:
        raise ValueError(f"the granter refused: {reply.get('error')}: {reply.get('message')}")
    granted, seq, ops = reply.get("granted"), reply.get("seq"), reply.get("ops", [])
    if type(granted) is not int or not 0 <= granted <= _AMOUNT_MAX:
        raise ValueError("granted must be a non-negative integer")
    if seq is not None and (type(seq) is not int or seq < 1):
        raise ValueError("seq must be a positive integer or null")
    if not isinstance(ops, list) or len(ops) > OPS_MAX:
        raise ValueError(f"ops must be a list of at most {OPS_MAX}")
    wire: list[tuple[bytes, bytes]] = []
    for item in ops:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
            and _SIG.fullmatch(item[1])
        ):
            raise ValueError("each op is [body text, 0x + 65-byte signature hex]")
        wire.append((item[0].encode(), bytes.fromhex(item[1][2:])))
    return Granted(granted, seq, wire)


def answer_frame(granted: int, seq: int | None, ops: list[tuple[bytes, bytes]]) -> bytes:
    """The answer frame; ``ops`` are cut to ``OPS_MAX`` and ``OPS_BYTES_MAX`` from the front
    (the last ops, the grant's end of the chain, are the ones kept)."""
    kept: list[list[str]] = []
    size = 0
    for body, sig in reversed(ops[-OPS_MAX:]):
        size += len(body) + 2 * len(sig)
        if size > OPS_BYTES_MAX:
            break
        kept.append([body.decode(), "0x" + sig.hex()])
    kept.reverse()
    return json.dumps({"granted": granted, "seq": seq, "ops": kept}).encode()


Answerer = Callable[[str, RightsAsk], Awaitable[bytes]]


def register(transport: Transport, answer: Answerer, is_node: Callable[[str], bool]) -> None:
    """Serve ``answer(asker, ask) -> answer frame`` to the fog's announced nodes."""

    async def serve(exchange: Exchange) -> None:
        ask = parse_ask(await exchange.receive())
        if not is_node(exchange.remote):
            reply = {"error": "forbidden", "message": "not a node of this fog"}
        elif ask is None:
            reply = {
                "error": "bad_request",
                "message": 'send {"account": "0x…", "amount": N > 0, "have": seq ≥ 0}',
            }
        else:
            await exchange.send(await answer(exchange.remote, ask))
            return
        await exchange.send(json.dumps(reply).encode())

    transport.register_handler(
        PROTOCOL,
        serve,
        frame_bytes_max=_ASK_BYTES_MAX,
        timeout_s=TIMEOUT_S,
        concurrent_max=CONCURRENT_MAX,
    )


async def ask(transport: Transport, peer: str, account: str, amount: int, have: int) -> Granted:
    """Ask ``peer`` for ``amount`` of ``account``'s rights; ``ValueError`` for a bad answer,
    ``node.p2p.transport.TransportError`` when it cannot be reached in time."""
    frame = json.dumps({"account": account, "amount": amount, "have": have}).encode()
    raw = await transport.request(
        peer, PROTOCOL, frame, frame_bytes_max=_ANSWER_BYTES_MAX, timeout_s=TIMEOUT_S
    )
    return parse_answer(raw)
