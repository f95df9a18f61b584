"""Tail benchmark (issue 14 §2): the gossip figures as distributions over many seeds.

Run: ``.venv/bin/python benchmarks/bench_tails.py [--jobs 2] [--broadcast-seeds 1..200]
[--fault-seeds 1..1000] [--fog-seeds 1..20] [--only broadcast-25,smoke-5,...] [--out tails]``. Each part is
one ``formation-sim sweep SCENARIO --seeds ... --jobs N --json`` in a fresh process
(``sweep_bench.run_sweep``): broadcast-25 over 200 seeds (every seed: max propagation
< 600 ms, every op at 99 % of the nodes), the small fault scenarios (smoke-5, churn-small,
faults-small, partition-small, crash-detect) over 1,000 seeds each (every seed converged,
one digest root, nothing lost) and, only when ``--fog-seeds`` is given, fog-1000 (issue 14's
aims: 99 % of nodes within 1 s and every node within 2 s on every seed). fog-1000 is off by
default: at 0.46x real time a seed takes ~100 s of a core, so 20 seeds are ~17 minutes on 2
cores, past this benchmark's 10-minute share; the command to run it is printed instead.
Writes ``benchmarks/results/tails.json``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_bench import Metric, Target, run_sweep, write_result

FAULT_SCENARIOS = ("smoke-5", "churn-small", "faults-small", "partition-small", "crash-detect")
GOSSIP_METRICS: tuple[Metric, ...] = (
    ("propagation_ms_p50", "{:,.1f}"),
    ("propagation_ms_p99", "{:,.1f}"),
    ("propagation_ms_max", "{:,.1f}"),
    ("time_to_99pct_ms_max", "{:,.1f}"),
    ("ops_not_reaching_99pct", "{:,.0f}"),
    ("msgs_per_op", "{:,.2f}"),
    ("converged", "{:,.0f}"),
    ("digest_roots_distinct", "{:,.0f}"),
    ("ops_lost", "{:,.0f}"),
    ("false_suspicions", "{:,.0f}"),
    ("settle_s", "{:,.3f}"),
    ("heal_converge_s", "{:,.3f}"),
    ("dead_detect_s_all_max", "{:,.3f}"),
    ("events", "{:,.0f}"),
    ("wall_s", "{:,.3f}"),
)
BROADCAST_TARGETS: dict[str, Target] = {
    "propagation_ms_max": (599.9, "max"),  # < 600 ms; figures are rounded to 0.1 ms
    "ops_not_reaching_99pct": (0.0, "max"),
    "converged": (1.0, "min"),
}
FAULT_TARGETS: dict[str, Target] = {
    "converged": (1.0, "min"),
    "digest_roots_distinct": (1.0, "max"),
    "ops_lost": (0.0, "max"),
}
# A node whose disk dies with it (a crash for good, a crash that loses the disk) takes along an
# op it wrote less than a flush interval before: tests/sim/test_tails.py says why.
OPS_MAY_DIE_WITH_A_DISK = frozenset({"crash-detect", "churn-small"})
FOG_TARGETS: dict[str, Target] = {
    "time_to_99pct_ms_max": (1000.0, "max"),
    "propagation_ms_max": (2000.0, "max"),
    "converged": (1.0, "min"),
}


def _fault_targets(name: str) -> dict[str, Target]:
    if name in OPS_MAY_DIE_WITH_A_DISK:
        return {k: v for k, v in FAULT_TARGETS.items() if k != "ops_lost"}
    return FAULT_TARGETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--broadcast-seeds", default="1..200")
    parser.add_argument("--fault-seeds", default="1..1000")
    parser.add_argument("--fog-seeds", default=None, help="run fog-1000 on these seeds too")
    parser.add_argument("--only", default=None, help="comma-separated scenario names, run in order")
    parser.add_argument("--out", default="tails", help="results file: benchmarks/results/OUT.json")
    args = parser.parse_args()
    plan: list[tuple[str, str, dict[str, Target]]] = [
        *((name, args.fault_seeds, _fault_targets(name)) for name in FAULT_SCENARIOS),
        ("broadcast-25", args.broadcast_seeds, BROADCAST_TARGETS),
    ]
    if args.fog_seeds:
        plan.append(("fog-1000", args.fog_seeds, FOG_TARGETS))
    if args.only:  # in the order given
        by_name = {p[0]: p for p in plan}
        wanted = args.only.split(",")
        unknown = [name for name in wanted if name not in by_name]
        if unknown:
            parser.error(f"--only {args.only}: no part named {', '.join(unknown)}")
        plan = [by_name[name] for name in wanted]
    if not args.fog_seeds:
        print(
            "fog-1000 skipped: ~100 s of a core per seed, 20 seeds do not fit this benchmark's "
            "10 minutes on 2 cores; run it with: .venv/bin/python benchmarks/bench_tails.py "
            "--only fog-1000 --fog-seeds 1..20",
            flush=True,
        )
    parts: dict[str, Any] = {}
    for scenario, seeds, targets in plan:
        parts[scenario] = run_sweep(
            f"tails/{scenario}", scenario, seeds, args.jobs, GOSSIP_METRICS, targets
        )
        # Written after every part: a long run stopped midway keeps what it measured.
        write_result(
            args.out,
            {
                "benchmark": "tails",
                "command": " ".join(["benchmarks/bench_tails.py", *sys.argv[1:]]),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "parts": parts,
                "complete": len(parts) == len(plan),
                "all_targets_met": all(
                    v["met"] for part in parts.values() for v in part["targets"].values()
                ),
            },
        )


if __name__ == "__main__":
    main()
