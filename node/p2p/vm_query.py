"""``/formation/vm/1.0.0``: ask the node that runs a VM for its console log or its metrics.

A VM's console log and its counters live on its host only (they change every second; they are
not replicated state). Any gateway can answer ``form manage logs`` and ``.../metrics`` for an
instance that runs elsewhere by asking the host over this protocol: one JSON frame
``{"what": "logs" | "metrics", "instance_id", "slot", "bytes_max"}`` and one JSON answer. The
gateway checked the signer owns the instance; the host answers announced nodes of the fog only,
and answers at most ``LOG_BYTES_MAX`` of log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from node.p2p.transport import Exchange, Transport

__all__ = ["LOG_BYTES_MAX", "PROTOCOL", "ask", "register"]

PROTOCOL: Final = "/formation/vm/1.0.0"
LOG_BYTES_MAX: Final = 256 * 1024
_FRAME_BYTES_MAX: Final = LOG_BYTES_MAX * 2 + 4096  # JSON escapes can double a log
_INSTANCE_ID: Final = re.compile(r"[0-9a-f]{40}")
TIMEOUT_S: Final = 10.0

Answerer = Callable[[str, str, int, int], dict[str, Any]]


def _ask_shape(ask: Any) -> tuple[str, str, int, int] | None:
    if not isinstance(ask, dict):
        return None
    what, instance_id = ask.get("what"), ask.get("instance_id")
    slot, bytes_max = ask.get("slot", 0), ask.get("bytes_max", 65536)
    if what not in ("logs", "metrics") or not isinstance(instance_id, str):
        return None
    if not _INSTANCE_ID.fullmatch(instance_id) or type(slot) is not int or not 0 <= slot < 16:
        return None
    if type(bytes_max) is not int or not 0 < bytes_max <= LOG_BYTES_MAX:
        return None
    return what, instance_id, slot, bytes_max


def register(transport: Transport, answer: Answerer, is_node: Callable[[str], bool]) -> None:
    """Serve ``answer(what, instance_id, slot, bytes_max)`` to the fog's announced nodes."""

    async def serve(exchange: Exchange) -> None:
        try:
            ask = _ask_shape(json.loads(await exchange.receive()))
        except ValueError:
            ask = None
        if not is_node(exchange.remote):
            reply: dict[str, Any] = {"error": "forbidden", "message": "not a node of this fog"}
        elif ask is None:
            reply = {
                "error": "bad_request",
                "message": 'send {"what": "logs"|"metrics", "instance_id": hex40, "slot": K}',
            }
        else:
            reply = answer(*ask)
        await exchange.send(json.dumps(reply).encode())

    transport.register_handler(
        PROTOCOL, serve, frame_bytes_max=4096, timeout_s=TIMEOUT_S, concurrent_max=8
    )


async def ask(
    transport: Transport, host: str, what: str, instance_id: str, slot: int, bytes_max: int
) -> dict[str, Any]:
    """The host's answer (a dict with ``error`` when it refused)."""
    frame = json.dumps(
        {"what": what, "instance_id": instance_id, "slot": slot, "bytes_max": bytes_max}
    ).encode()
    raw = await transport.request(
        host, PROTOCOL, frame, frame_bytes_max=_FRAME_BYTES_MAX, timeout_s=TIMEOUT_S
    )
    reply = json.loads(raw)
    if not isinstance(reply, dict):
        raise ValueError("the host's answer is not a JSON object")
    return reply
