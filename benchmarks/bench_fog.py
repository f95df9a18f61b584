"""Real node processes on loopback: time to form a fog, and what each node costs.

Run: ``.venv/bin/python benchmarks/bench_fog.py [--sizes 10 20]``. For each size, starts that
many ``formation-node run`` processes (``node.devnet.LocalFog``: node 0 is everyone's
bootstrap peer), measures the time from the last start until every node holds every node's
``node.announce`` op with identical state digests, then samples each process's RSS and CPU
time over 10 s of running with one heartbeat op per node per second. Prints a table; writes ``benchmarks/results/fog.json``.
Loopback only.

Propagation: every node signs a ``node.capacity`` heartbeat op each second
(``--heartbeat-s 1``); each node records when ops reached it (``arrivals`` on the control
socket), and propagation is arrival time minus the op's HLC wall time (one machine, one clock).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from node.control import query
from node.devnet import LocalFog, process_usage

RESULTS = Path(__file__).parent / "results" / "fog.json"


def bench(size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fog-") as tmp:
        fog = LocalFog(Path(tmp), extra_args=("--heartbeat-s", "1"))
        try:
            started = time.monotonic()
            for i in range(size):
                fog.start(i)
            all_started = time.monotonic()
            converge_s = fog.wait(lambda: fog.converged(size), timeout_s=180)
            pids = [proc.pid for proc in fog.procs.values()]
            before = [process_usage(pid) for pid in pids]
            idle_s = 10.0
            time.sleep(idle_s)
            after = [process_usage(pid) for pid in pids]
            delays_ms = sorted(
                arrived - written
                for i in fog.procs
                for _, written, arrived in query(fog.data_dir(i), "arrivals")["arrivals"]
                if written >= int((time.time() - idle_s) * 1000)  # ops of the measured window
            )
        finally:
            fog.stop_all()
    cpu = [(a[0] - b[0]) / idle_s for a, b in zip(after, before, strict=True)]
    rss = [a[1] for a in after]
    return {
        "nodes": size,
        "start_all_s": round(all_started - started, 2),
        "converge_after_last_start_s": round(converge_s, 2),
        "ops_per_s": size,
        "deliveries_measured": len(delays_ms),
        "propagation_ms_p50": delays_ms[len(delays_ms) // 2] if delays_ms else None,
        "propagation_ms_p99": delays_ms[int(len(delays_ms) * 0.99)] if delays_ms else None,
        "propagation_ms_max": delays_ms[-1] if delays_ms else None,
        "cpu_per_node_percent": round(100 * sum(cpu) / len(cpu), 2),
        "rss_per_node_mib": round(sum(rss) / len(rss) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20])
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        print(f"starting {size} node processes ...", flush=True)
        rows.append(bench(size))
        print(f"  {rows[-1]}", flush=True)
    header = (
        "nodes",
        "start all s",
        "converge s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU %/node",
        "RSS MiB/node",
    )
    keys = (
        "nodes",
        "start_all_s",
        "converge_after_last_start_s",
        "propagation_ms_p50",
        "propagation_ms_p99",
        "propagation_ms_max",
        "cpu_per_node_percent",
        "rss_per_node_mib",
    )
    print("  ".join(f"{h:>12}" for h in header))
    for r in rows:
        print("  ".join(f"{r[k]!s:>12}" for k in keys))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "fog", "runs": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
