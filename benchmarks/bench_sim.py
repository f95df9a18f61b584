"""Simulator benchmark: the protocol's numbers and the simulator's own speed, at scale.

Run: ``.venv/bin/python benchmarks/bench_sim.py [--core NAME] [--scale F] [--only NAME ...]``.
Runs ``broadcast-25``, ``fog-1000`` and ``partition-heal-1000`` (``--scale 0.1`` runs the
1,000-node ones with 100 nodes; broadcast-25 is never scaled: its set-up is Maelstrom's), each
in a fresh ``formation-sim run --json`` process so that memory per node is that run's alone.
Prints a table and writes ``benchmarks/results/sim.json`` (``sim-<core>.json`` for a core other
than the default, ``-scaled`` added when scaled).

Per scenario: propagation p50/p99/max, time to 99 % of nodes, messages and bytes per op and
per node per second, payload copies per op, convergence after the heal, false suspicions,
whether every live node converged, and the simulator's cost: wall time, speed factor
(simulated seconds per wall second; the aim for fog-1000 is 10x on one core), events per
second and memory per simulated node (RSS growth / nodes).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from simulations.cores import default_core_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
SCENARIOS = ("broadcast-25", "fog-1000", "partition-heal-1000")
_SCALED = {"fog-1000": 1000, "partition-heal-1000": 1000}
_COLUMNS = (
    ("nodes", "nodes", "{:,}"),
    ("ops", "ops", "{:,}"),
    ("propagation_ms_p50", "p50 ms", "{:,.1f}"),
    ("propagation_ms_p99", "p99 ms", "{:,.1f}"),
    ("propagation_ms_max", "max ms", "{:,.1f}"),
    ("msgs_per_op", "msgs/op", "{:,.1f}"),
    ("bytes_per_node_per_s", "B/node/s", "{:,.0f}"),
    ("heal_converge_s", "heal s", "{:,.2f}"),
    ("converged", "conv", "{}"),
    ("wall_s", "wall s", "{:,.1f}"),
    ("speed_factor", "speed x", "{:,.2f}"),
    ("memory_per_node_bytes", "KiB/node", "{:,.0f}"),
)


def run_one(name: str, core: str, nodes: int | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "simulations.cli", "run", name, "--core", core, "--json"]
    if nodes is not None:
        argv += ["--nodes", str(nodes)]
    print(f"  running {name} ({nodes or 'default'} nodes, core {core}) ...", flush=True)
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if not out.stdout.strip():
        # The simulation itself failed (a core broke a driver rule): record why, go on.
        return {"error": out.stderr.strip(), "exit_status": out.returncode}
    result: dict[str, Any] = json.loads(out.stdout)
    result["exit_status"] = out.returncode
    return result


def _cell(result: dict[str, Any], key: str, fmt: str) -> str:
    value = result.get(key)
    if value is None:
        return "-"
    if key == "memory_per_node_bytes":
        value = value / 1024
    return fmt.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", help="gossip core (default: gossip if it imports, else flood)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="node-count factor for the 1,000-node runs"
    )
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        parser.error(f"--scale {args.scale}: use a factor in (0, 1]")
    default_core, _ = default_core_name()
    core = args.core or default_core
    runs: dict[str, dict[str, Any]] = {}
    print(f"simulator benchmark (core {core}, one process per scenario)")
    for name in args.only or SCENARIOS:
        nodes = None
        if name in _SCALED and args.scale != 1.0:
            nodes = max(2, round(_SCALED[name] * args.scale))
        runs[name] = run_one(name, core, nodes)
    header = f"  {'scenario':<20}" + "".join(f"{title:>11}" for _, title, _ in _COLUMNS)
    print(header)
    for name, result in runs.items():
        cells = "".join(f"{_cell(result, key, fmt):>11}" for key, _, fmt in _COLUMNS)
        print(f"  {name:<20}{cells}")
        for failure in result.get("checks_failed", []):
            print(f"    check failed: {failure}")
        if "error" in result:
            print(f"    error: {result['error']}")
    # sim.json holds the real core's numbers; another core's go next to it.
    suffix = "" if core == "gossip" else f"-{core}"
    if args.scale != 1.0:
        suffix += "-scaled"
    path = RESULTS / f"sim{suffix}.json"
    payload = {
        "benchmark": "sim",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "core": core,
        "scale": args.scale,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
