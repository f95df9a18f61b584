"""What the sweep benchmarks share: run ``formation-sim sweep`` over seeds, print and judge.

``bench_placement.py`` and ``bench_mesh.py`` each name a scenario, the metrics to print and the
targets every seed must meet; ``main`` runs the sweep in a fresh process, prints each metric's
min / median / max and worst seed, says whether each target was met on every seed and writes
``benchmarks/results/<name>.json``. (Not ``bench_*.py`` itself: ``make bench`` runs those.)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"

Metric = tuple[str, str]  # name, format
Target = tuple[float, str]  # bound, "max" | "min"


def main(
    name: str,
    description: str,
    scenario: str,
    metrics_shown: Sequence[Metric],
    targets: Mapping[str, Target],
    noun: str = "nodes",
) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scenario", default=scenario)
    parser.add_argument("--seeds", default="1..20", help="A..B, A,B,C or a mix")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    argv = [sys.executable, "-m", "simulations.cli", "sweep", args.scenario]
    argv += ["--seeds", args.seeds, "--jobs", str(args.jobs), "--json"]
    print(f"{name} benchmark: {' '.join(argv[1:])}", flush=True)
    started = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    if not out.stdout.strip():
        raise SystemExit(f"the sweep failed (exit {out.returncode}): {out.stderr.strip()}")
    report: dict[str, Any] = json.loads(out.stdout)
    metrics = report["metrics"]
    width = max(len(m) for m, _ in metrics_shown) + 2
    print(f"  {report['runs']} seeds, {report['nodes']} {noun}, sweep wall {wall_s:.1f} s")
    print(f"  {'metric':<{width}} {'min':>10} {'median':>10} {'max':>10}  worst seed")
    for metric, fmt in metrics_shown:
        row = metrics.get(metric)
        if row is None:
            continue
        cells = " ".join(f"{fmt.format(row[k]):>10}" for k in ("min", "median", "max"))
        print(f"  {metric:<{width}} {cells}  {row['worst_seed']} ({fmt.format(row['worst'])})")
    verdicts = {}
    for metric, (bound, side) in targets.items():
        worst = metrics[metric]["worst"]
        ok = worst <= bound if side == "max" else worst >= bound
        verdicts[metric] = {"bound": bound, "side": side, "worst": worst, "met": ok}
        sign = "<=" if side == "max" else ">="
        print(
            f"  target {metric} {sign} {bound:g} on every seed: {'met' if ok else 'MISSED'} "
            f"(worst {worst}, seed {metrics[metric]['worst_seed']})"
        )
    if report["seeds_failed"]:
        print(f"  checks failed on seeds {report['seeds_failed']}")
    payload = {
        "benchmark": name,
        "command": " ".join([f"benchmarks/bench_{name}.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "sweep_wall_s": round(wall_s, 1),
        "targets": verdicts,
        "sweep": report,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
