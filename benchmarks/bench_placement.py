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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_bench import main

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


if __name__ == "__main__":
    main("placement", __doc__.splitlines()[0], "placement-1000", METRICS, TARGETS, noun="hosts")
