"""The simulator's byte accounting equals the wire format's uncompressed frame size."""

from __future__ import annotations

import random

import pytest

from node.gossip.messages import (
    Ack,
    Attach,
    Detach,
    Gossip,
    IHave,
    IWant,
    Join,
    MemberState,
    MemberUpdate,
    Message,
    Nack,
    Packet,
    Ping,
    PingReq,
    Sync,
    Welcome,
)
from simulations.sizes import packet_size

wire = pytest.importorskip("node.gossip.wire")


def _ids(rng: random.Random, count: int) -> tuple[bytes, ...]:
    return tuple(rng.randbytes(32) for _ in range(count))


def _message(rng: random.Random, updates: tuple[MemberUpdate, ...]) -> Message:
    kind = rng.randrange(12)
    if kind == 0:
        ops = tuple(
            (rng.randbytes(rng.randrange(1, 400)), rng.randbytes(65))
            for _ in range(rng.randrange(4))
        )
        return Gossip(ops, rng.random() < 0.5)
    if kind == 1:
        return IHave(_ids(rng, rng.randrange(200)))
    if kind == 2:
        return Attach(_ids(rng, rng.randrange(1, 3)))
    if kind == 3:
        return IWant(_ids(rng, rng.randrange(1, 3)))
    if kind == 4:
        return Ping(rng.randrange(1 << rng.randrange(1, 60)))
    if kind == 5:
        return Ack(rng.randrange(1 << 20))
    if kind == 6:
        return Nack(rng.randrange(1 << 20))
    if kind == 7:
        return PingReq(rng.randrange(1 << 20), "n7")
    if kind == 8:
        return Join("sim://nödé")
    if kind == 9:
        return Welcome(updates)
    if kind == 10:
        return Sync(rng.randrange(1 << 32), rng.randbytes(rng.randrange(1, 300)))
    return Detach()


def _packet(rng: random.Random) -> Packet:
    updates = tuple(
        MemberUpdate(
            f"n{j}",
            "sim://n" * rng.randrange(3),
            MemberState(rng.randrange(4)),
            rng.randrange(1 << rng.randrange(1, 40)),
            rng.choice(["", "n3", "n12345"]),
        )
        for j in range(rng.randrange(4))
    )
    messages = tuple(_message(rng, updates) for _ in range(rng.randrange(6)))
    return Packet(f"n{rng.randrange(1000)}", messages, updates)


def test_packet_size_matches_wire_encoded_size() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        packet = _packet(rng)
        assert packet_size(packet) == wire.encoded_size(packet), packet
