"""Bytes a packet costs on the wire, for the simulator's traffic metrics.

The simulator hands ``Packet`` objects from node to node without encoding them (encoding every
packet would cost more than the protocol it simulates), so bytes are *accounted*, not sent.
``packet_size`` computes the size of the uncompressed ``node.gossip.wire`` frame by arithmetic
over the layout (docs/formats.md section 5): a 2-byte header, then varint counts,
length-prefixed strings, 32-byte ids, ``varint(len(body)) body sig`` per op. It is about ten
times cheaper than ``wire.encoded_size``, which builds the payload. The engine checks the two
agree (and that the wire format accepts the core's packet at all) on every
``WIRE_CHECK_EVERY``-th packet and on every large one, and ``tests/sim`` checks them on random
packets, so the mirror cannot drift from the format silently. Compression (zstd, for large op
batches) is not modelled: the numbers are an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from node.gossip.messages import (
    Attach,
    Detach,
    Gossip,
    IHave,
    IWant,
    Join,
    MemberUpdate,
    Packet,
    PingReq,
    Sync,
    Welcome,
)

__all__ = ["SIZE_SOURCE", "WIRE_CHECK_EVERY", "packet_size", "wire_size"]

_HEADER_BYTES: Final = 2
_ID_BYTES: Final = 32
WIRE_CHECK_EVERY: Final = 64


def _varint_len(value: int) -> int:
    return 1 if value < 0x80 else (value.bit_length() + 6) // 7


def _text_len(text: str) -> int:
    raw = len(text) if text.isascii() else len(text.encode())
    return _varint_len(raw) + raw


def _members_len(members: tuple[MemberUpdate, ...]) -> int:
    size = _varint_len(len(members))
    for m in members:
        node, addr, origin, inc = m.node, m.addr, m.origin, m.incarnation
        short = len(node) + len(addr) + len(origin)
        if short < 0x80 and node.isascii() and addr.isascii() and origin.isascii():
            # The common case, inline: three 1-byte length prefixes and a state byte.
            size += short + 4 + (1 if inc < 0x80 else (inc.bit_length() + 6) // 7)
        else:
            size += _text_len(node) + _text_len(addr) + _text_len(origin) + 1 + _varint_len(inc)
    return size


def packet_size(packet: Packet) -> int:
    """Size of ``packet``'s uncompressed wire frame (``len(wire.encode(p, compress=False))``)."""
    size = _HEADER_BYTES + _text_len(packet.sender) + _members_len(packet.updates)
    messages = packet.messages
    size += _varint_len(len(messages)) + len(messages)  # count + one tag byte each
    for msg in messages:
        kind = type(msg)
        if kind is Gossip:
            ops = msg.ops  # type: ignore[union-attr]
            size += 1 + _varint_len(len(ops))
            for body, sig in ops:
                n = len(body)
                size += (1 if n < 0x80 else (n.bit_length() + 6) // 7) + n + len(sig)
        elif kind is IHave or kind is Attach or kind is IWant:
            ids = msg.ids  # type: ignore[union-attr]
            size += _varint_len(len(ids)) + _ID_BYTES * len(ids)
        elif kind is Sync:
            body = msg.body  # type: ignore[union-attr]
            size += _varint_len(msg.session) + _varint_len(len(body)) + len(body)  # type: ignore[union-attr]
        elif kind is PingReq:
            size += _varint_len(msg.seq) + _text_len(msg.target)  # type: ignore[union-attr]
        elif kind is Join:
            size += _text_len(msg.addr)  # type: ignore[union-attr]
        elif kind is Welcome:
            size += _members_len(msg.members)  # type: ignore[union-attr]
        elif kind is not Detach:  # Ping, Ack, Nack: a sequence number
            size += _varint_len(msg.seq)  # type: ignore[union-attr]
    return size


def _pick() -> tuple[Callable[[Packet], int] | None, str]:
    try:
        from node.gossip.wire import encoded_size
    except ImportError:
        return None, "wire layout by arithmetic (node.gossip.wire does not import: unchecked)"

    def checked(packet: Packet) -> int:
        return encoded_size(packet)

    return checked, (
        f"node.gossip.wire layout, uncompressed, by arithmetic (checked against "
        f"wire.encoded_size on every {WIRE_CHECK_EVERY}th and every large packet)"
    )


# The real encoder's size function, or None when node.gossip.wire does not import.
wire_size, SIZE_SOURCE = _pick()
