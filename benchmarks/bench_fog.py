"""Real node processes on loopback: time to form a fog, and what each node costs.

Run: ``.venv/bin/python benchmarks/bench_fog.py [--sizes 10 20]``. For each size, starts that
many ``formation-node run`` processes (``node.devnet.LocalFog``: node 0 is everyone's
bootstrap peer), measures the time from the last start until every node holds every node's
``node.announce`` op with identical state digests, then samples each process's RSS and CPU
time over 10 s of idle running. Prints a table; writes ``benchmarks/results/fog.json``.
Loopback only.

Not measured yet: propagation percentiles of a stream of ops (needs the gateway to inject ops
from outside; the simulator measures the protocol's propagation, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from node.devnet import LocalFog

RESULTS = Path(__file__).parent / "results" / "fog.json"
_TICKS_S = os.sysconf("SC_CLK_TCK")


def _proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS_S
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return cpu_s, rss_pages * os.sysconf("SC_PAGE_SIZE")


def bench(size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fog-") as tmp:
        fog = LocalFog(Path(tmp))
        try:
            started = time.monotonic()
            for i in range(size):
                fog.start(i)
            all_started = time.monotonic()
            converge_s = fog.wait(lambda: fog.converged(size), timeout_s=180)
            pids = [proc.pid for proc in fog.procs.values()]
            before = [_proc_sample(pid) for pid in pids]
            idle_s = 10.0
            time.sleep(idle_s)
            after = [_proc_sample(pid) for pid in pids]
        finally:
            fog.stop_all()
    cpu = [(a[0] - b[0]) / idle_s for a, b in zip(after, before, strict=True)]
    rss = [a[1] for a in after]
    return {
        "nodes": size,
        "start_all_s": round(all_started - started, 2),
        "converge_after_last_start_s": round(converge_s, 2),
        "idle_cpu_per_node_percent": round(100 * sum(cpu) / len(cpu), 2),
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
    print(
        f"{'nodes':>6} {'start all s':>12} {'converge s':>11} {'idle CPU %/node':>16} {'RSS MiB/node':>13}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>6} {r['start_all_s']:>12} {r['converge_after_last_start_s']:>11} "
            f"{r['idle_cpu_per_node_percent']:>16} {r['rss_per_node_mib']:>13}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "fog", "runs": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
