"""Dial time of the libp2p transport on loopback, with py-libp2p's 250 ms happy-eyeballs wait and with ours.

Run: ``.venv/bin/python benchmarks/bench_transport_dial.py [--n 10]``
Prints median/min/max connect() time per setting and writes
``benchmarks/results/transport_dial.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import libp2p.network.swarm as libp2p_swarm
import trio

from node.identity.keys import NodeKey
from node.p2p import transport as mesh_transport

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


async def dial_times_ms(n: int, bare: bool) -> list[float]:
    times: list[float] = []
    listener_key = NodeKey((1).to_bytes(32, "big"))
    async with mesh_transport.open_transport(listener_key, LOOPBACK) as listener:
        target = listener.listen_addrs[0]
        if bare:
            target = target.split("/p2p/")[0]
        for i in range(n):
            async with mesh_transport.open_transport(
                NodeKey((100 + i).to_bytes(32, "big")), LOOPBACK
            ) as dialer:
                start = time.perf_counter()
                await dialer.connect(target)
                times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()
    results = {}
    for label, delay_s, bare in (
        ("libp2p default 250 ms, /p2p addr", 0.250, False),
        ("patched 10 ms, /p2p addr", mesh_transport._HAPPY_EYEBALLS_DELAY_S, False),
        ("no /p2p (raw dial + Noise)", mesh_transport._HAPPY_EYEBALLS_DELAY_S, True),
    ):
        libp2p_swarm._HAPPY_EYEBALLS_DELAY = delay_s
        times = trio.run(dial_times_ms, args.n, bare)
        results[label] = {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "n": len(times),
        }
        print(
            f"{label:36s} median {statistics.median(times):6.1f} ms  min {min(times):6.1f}  max {max(times):6.1f}"
        )
    libp2p_swarm._HAPPY_EYEBALLS_DELAY = mesh_transport._HAPPY_EYEBALLS_DELAY_S
    out = Path(__file__).parent / "results" / "transport_dial.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
