"""Shared helpers for the simulator tests (tests/sim).

``SIM_CORE`` is the gossip core the convergence and determinism tests drive: the real one,
``gossip`` (``node.gossip.core``), unless FORMATION_SIM_CORE names another (``flood``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from simulations.cores import load_core
from simulations.engine import RunResult, run_scenario
from simulations.scenario import Scenario, load_scenario, parse_scenario

SIM_CORE = os.environ.get("FORMATION_SIM_CORE", "gossip")
ROOT = Path(__file__).resolve().parents[2]


def run(
    scenario: str | Scenario,
    *,
    core: str = SIM_CORE,
    nodes: int | None = None,
    seed: int | None = None,
    duration_s: float | None = None,
) -> RunResult:
    sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
    sc = sc.with_overrides(nodes=nodes, seed=seed, duration_s=duration_s, core=core)
    return run_scenario(sc, load_core(core))


def scenario(data: dict[str, Any], name: str = "test") -> Scenario:
    return parse_scenario({"description": "a test scenario", **data}, name)


# Metrics that depend on the host (wall time, memory), not on the simulated run.
HOST_METRICS = frozenset(
    {
        "wall_s",
        "check_wall_s",
        "speed_factor",
        "events_per_wall_s",
        "memory_per_node_bytes",
        "peak_rss_bytes",
    }
)


def simulated(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in HOST_METRICS}


def formation_sim(*argv: str, hash_seed: str | None = None) -> str:
    """``formation-sim ARGV`` in a fresh process (with ``PYTHONHASHSEED`` when given); its
    stdout, once it has exited 0."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed} if hash_seed is not None else None
    out = subprocess.run(
        [sys.executable, "-m", "simulations.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout
