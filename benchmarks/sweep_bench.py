"""What the sweep benchmarks share: run ``formation-sim sweep`` over seeds, print and judge.

``bench_placement.py`` and ``bench_mesh.py`` each name a scenario, the metrics to print and the
targets every seed must meet; ``main`` runs the sweep in a fresh process, prints each metric's
min / median / p99 / max and worst seed, says whether each target was met on every seed and
writes ``benchmarks/results/<name>.json``. ``bench_tails.py`` runs several sweeps with
``run_sweep`` and writes one file with ``write_result``. (Not ``bench_*.py`` itself: ``make
bench`` runs those.)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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
    payload = {
        "benchmark": name,
        "command": " ".join([f"benchmarks/bench_{name}.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        **run_sweep(name, args.scenario, args.seeds, args.jobs, metrics_shown, targets, noun),
    }
    write_result(name, payload)


def run_sweep(
    name: str,
    scenario: str,
    seeds: str,
    jobs: int,
    metrics_shown: Sequence[Metric],
    targets: Mapping[str, Target],
    noun: str = "nodes",
) -> dict[str, Any]:
    """One ``formation-sim sweep`` in a fresh process, printed and judged: the sweep's wall and
    CPU time (the workers' included), the verdict on each target, and the sweep's report."""
    argv = [sys.executable, "-m", "simulations.cli", "sweep", scenario]
    argv += ["--seeds", seeds, "--jobs", str(jobs), "--json"]
    print(f"{name} benchmark: {' '.join(argv[1:])}", flush=True)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if not out.stdout.strip():
        raise SystemExit(f"the sweep failed (exit {out.returncode}): {out.stderr.strip()}")
    report: dict[str, Any] = json.loads(out.stdout)
    metrics = report["metrics"]
    width = max(len(m) for m, _ in metrics_shown) + 2
    print(
        f"  {report['runs']} seeds, {report['nodes']} {noun}, sweep wall {wall_s:.1f} s, "
        f"CPU {cpu_s:.1f} s"
    )
    print(f"  {'metric':<{width}} {'min':>10} {'median':>10} {'p99':>10} {'max':>10}  worst seed")
    for metric, fmt in metrics_shown:
        row = metrics.get(metric)
        if row is None:
            continue
        cells = " ".join(f"{fmt.format(row[k]):>10}" for k in ("min", "median", "p99", "max"))
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
    return {
        "sweep_wall_s": round(wall_s, 1),
        "sweep_cpu_s": round(cpu_s, 1),
        "targets": verdicts,
        "sweep": report,
    }


def write_result(name: str, payload: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
