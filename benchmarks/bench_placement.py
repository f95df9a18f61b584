"""Placement benchmark: ``placement-1000`` over many seeds, against the issue's targets.

Run: ``.venv/bin/python benchmarks/bench_placement.py [--seeds 1..20] [--jobs 2]
[--scenario placement-1000]``. It runs ``formation-sim sweep SCENARIO --seeds ... --json`` in
a fresh process (one simulation per seed: 1,000 hosts with lagging views, the real
``node.placement.core``, an independent double-booking checker and a central best-fit
oracle; see ``simulations.placement``), prints each metric's min / median / max and worst seed,
checks the targets of issue 12 (0 double bookings, >= 2,000 placements/s of virtual time,
packing within 10 % of the oracle) on every seed, and writes ``benchmarks/results/placement.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
METRICS = (
    ("placements_per_s", "{:,.0f}"),
    ("double_bookings", "{:,.0f}"),
    ("oracle_gap", "{:.4f}"),
    ("placements", "{:,.0f}"),
    ("unplaceable", "{:,.0f}"),
    ("refusals", "{:,.0f}"),
    ("retries", "{:,.0f}"),
    ("timeouts", "{:,.0f}"),
    ("rescheduled", "{:,.0f}"),
    ("reschedule_failed", "{:,.0f}"),
    ("asks_per_placement", "{:.3f}"),
    ("p50_place_ms", "{:,.1f}"),
    ("p99_place_ms", "{:,.1f}"),
    ("utilization", "{:.4f}"),
    ("oracle_utilization", "{:.4f}"),
    ("wall_s", "{:,.1f}"),
    ("placements_per_wall_s", "{:,.0f}"),
)
# name -> (bound, "max" | "min"): what issue 12 asks of every seed.
TARGETS = {
    "double_bookings": (0.0, "max"),
    "placements_per_s": (2000.0, "min"),
    "oracle_gap": (0.10, "max"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="placement-1000")
    parser.add_argument("--seeds", default="1..20", help="A..B, A,B,C or a mix")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    argv = [sys.executable, "-m", "simulations.cli", "sweep", args.scenario]
    argv += ["--seeds", args.seeds, "--jobs", str(args.jobs), "--json"]
    print(f"placement benchmark: {' '.join(argv[1:])}", flush=True)
    started = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    if not out.stdout.strip():
        raise SystemExit(f"the sweep failed (exit {out.returncode}): {out.stderr.strip()}")
    report: dict[str, Any] = json.loads(out.stdout)
    metrics = report["metrics"]
    print(f"  {report['runs']} seeds, {report['nodes']} hosts, sweep wall {wall_s:.1f} s")
    print(f"  {'metric':<22} {'min':>10} {'median':>10} {'max':>10}  worst seed")
    for name, fmt in METRICS:
        row = metrics.get(name)
        if row is None:
            continue
        cells = " ".join(f"{fmt.format(row[k]):>10}" for k in ("min", "median", "max"))
        print(f"  {name:<22} {cells}  {row['worst_seed']} ({fmt.format(row['worst'])})")
    verdicts = {}
    for name, (bound, side) in TARGETS.items():
        worst = metrics[name]["worst"]
        ok = worst <= bound if side == "max" else worst >= bound
        verdicts[name] = {"bound": bound, "side": side, "worst": worst, "met": ok}
        sign = "<=" if side == "max" else ">="
        print(
            f"  target {name} {sign} {bound:g} on every seed: {'met' if ok else 'MISSED'} "
            f"(worst {worst}, seed {metrics[name]['worst_seed']})"
        )
    if report["seeds_failed"]:
        print(f"  checks failed on seeds {report['seeds_failed']}")
    payload = {
        "benchmark": "placement",
        "command": " ".join(["benchmarks/bench_placement.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "sweep_wall_s": round(wall_s, 1),
        "targets": verdicts,
        "sweep": report,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "placement.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
