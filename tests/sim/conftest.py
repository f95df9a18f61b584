"""Shared helpers for the simulator tests (tests/sim).

``SIM_CORE`` is the gossip core the convergence and determinism tests drive: the real one,
``gossip`` (``node.gossip.core``), unless FORMATION_SIM_CORE names another (``flood``).
"""

from __future__ import annotations

import os
from typing import Any

from simulations.cores import load_core
from simulations.engine import RunResult, run_scenario
from simulations.scenario import Scenario, load_scenario, parse_scenario

SIM_CORE = os.environ.get("FORMATION_SIM_CORE", "gossip")


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
