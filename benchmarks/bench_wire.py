"""Gossip wire codec benchmark: packets per second and bytes for typical packets.

Run: ``.venv/bin/python benchmarks/bench_wire.py`` (a few seconds). Prints a table and writes
``benchmarks/results/wire.json``. One core, no threads.

Measured, per packet shape:

* ``gossip10``: a Gossip batch of 10 signed ops from ``simulations.workload`` (~270-byte
  bodies), the common flush; compressed on the wire.
* ``gossip10_plain``: the same, ``encode(..., compress=False)``.
* ``ping8``: a Ping carrying 8 membership updates (address node ids, multiaddrs).
* ``ihave50``: an IHave of 50 op ids (random, so never compressed).
* ``gossip100``: a 100-op batch, for the compression ratio.

For each: ``encode`` and ``decode`` packets/s, ``encoded_size`` calls/s, wire bytes, the
uncompressed frame bytes and the ratio between them. Also the time to refuse zstd bombs
(tests assert the refusal and its memory, never its speed).
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from node.gossip.messages import Gossip, IHave, MemberState, MemberUpdate, Packet, Ping
from node.gossip.wire import FLAG_ZSTD, MAGIC, BadPacket, decode, encode, encoded_size
from simulations.workload import Workload

SEED = 42
T0_MS = 1_760_000_000_000
RESULTS = Path(__file__).parent / "results" / "wire.json"
RUN_S = 0.4


def per_second(fn: Callable[[], object]) -> float:
    """Calls per second of ``fn``, timed over about RUN_S after a warm-up."""
    fn()
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - started
        if elapsed >= RUN_S:
            return calls / elapsed
        calls *= 2


def node_id(rng: random.Random) -> str:
    return "0x" + rng.randbytes(20).hex()


def packets(rng: random.Random) -> dict[str, Packet]:
    workload = Workload(rng, "bench")
    ops = [(op.body, op.sig) for op in workload.ops(100, T0_MS)]
    sender = node_id(rng)
    updates = tuple(
        MemberUpdate(
            node_id(rng),
            f"/ip4/10.0.{i}.{i + 1}/tcp/4001/p2p/12D3KooW{rng.randbytes(24).hex()}",
            MemberState.ALIVE if i % 3 else MemberState.SUSPECT,
            rng.randrange(1, 1000),
        )
        for i in range(8)
    )
    return {
        "gossip10": Packet(sender, (Gossip(tuple(ops[:10])),)),
        "ping8": Packet(sender, (Ping(rng.randrange(2**32)),), updates),
        "ihave50": Packet(sender, (IHave(tuple(rng.randbytes(32) for _ in range(50))),)),
        "gossip100": Packet(sender, (Gossip(tuple(ops)),)),
    }


def bench_packet(packet: Packet, *, compress: bool = True) -> dict[str, Any]:
    data = encode(packet, compress=compress)
    assert decode(data) == packet
    plain_bytes = encoded_size(packet)
    return {
        "wire_bytes": len(data),
        "uncompressed_bytes": plain_bytes,
        "compressed": data[1] == FLAG_ZSTD,
        "compression_ratio": round(plain_bytes / len(data), 3),
        "encode_per_s": round(per_second(lambda: encode(packet, compress=compress))),
        "decode_per_s": round(per_second(lambda: decode(data))),
        "encoded_size_per_s": round(per_second(lambda: encoded_size(packet))),
    }


def bench_bombs() -> dict[str, Any]:
    size = 100_000_000
    stream = zstandard.ZstdCompressor(level=3).compressobj(size=size)
    chunk = bytes(1_000_000)
    bomb = b"".join(stream.compress(chunk) for _ in range(size // len(chunk))) + stream.flush()
    header_bytes = zstandard.frame_header_size(bomb)
    # Same blocks, but the header claims 4 MiB - 2 (the largest payload allowed): the decoder
    # must stop when its 4 MiB buffer is full.
    liar = bomb[: header_bytes - 4] + (4 * 2**20 - 2).to_bytes(4, "little") + bomb[header_bytes:]
    out: dict[str, Any] = {"bomb_frame_bytes": len(bomb), "bomb_content_bytes": size}
    for name, frame_data in (("declared", bomb), ("lying", liar)):
        data = bytes((MAGIC, FLAG_ZSTD)) + frame_data

        def refuse(data: bytes = data) -> None:
            try:
                decode(data)
            except BadPacket:
                return
            raise AssertionError("a bomb was accepted")

        out[f"refuse_{name}_us"] = round(1e6 / per_second(refuse), 1)
    return out


def main() -> int:
    rng = random.Random(SEED)
    shapes = packets(rng)
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "machine": platform.machine(),
        "packets": {},
    }
    table = results["packets"]
    for name, packet in shapes.items():
        table[name] = bench_packet(packet)
        if name == "gossip10":
            table["gossip10_plain"] = bench_packet(packet, compress=False)
    gossip10 = shapes["gossip10"]
    body_bytes = [len(body) for message in gossip10.messages for body, _ in message.ops]  # type: ignore[union-attr]
    results["gossip10_mean_op_body_bytes"] = round(sum(body_bytes) / len(body_bytes), 1)
    results["bombs"] = bench_bombs()

    print(
        f"{'packet':<16}{'wire B':>8}{'plain B':>9}{'ratio':>7}{'enc/s':>10}{'dec/s':>10}{'size/s':>10}"
    )
    for name, row in table.items():
        print(
            f"{name:<16}{row['wire_bytes']:>8}{row['uncompressed_bytes']:>9}"
            f"{row['compression_ratio']:>7}{row['encode_per_s']:>10}{row['decode_per_s']:>10}"
            f"{row['encoded_size_per_s']:>10}"
        )
    print(f"mean op body in gossip10: {results['gossip10_mean_op_body_bytes']} B")
    print("bombs:", results["bombs"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
