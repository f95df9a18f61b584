"""The end of a run: the invariants checked, the report built, the ``RunResult`` returned.

``finish`` reads the simulation once it has stopped and changes nothing in it. The report is
the flat dict ``formation-sim run --json`` prints: ``Metrics.report`` (its docstring defines
every metric), the verdicts of ``simulations.invariants``, the drops, the cost of the run (wall
time, memory), the cores' summed stats and the ``trace_hash``. Non-finite floats become None.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulations import invariants
from simulations.metrics import core_stats_totals, json_safe
from simulations.scenario import SCENARIO_DIR, Scenario
from simulations.sizes import SIZE_SOURCE

if TYPE_CHECKING:
    from simulations.engine import Simulation

__all__ = ["RunResult", "finish", "rss_bytes", "scenario_arg"]


@dataclass
class RunResult:
    """One run's report (``metrics``), the checks it failed and its propagation CDF."""

    scenario: Scenario
    core: str
    metrics: dict[str, Any]
    failures: list[str]
    cdf: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def reproduce(self) -> str:
        return (
            f"formation-sim run {scenario_arg(self.scenario)} "
            f"--nodes {self.scenario.nodes} --seed {self.scenario.seed} --core {self.core}"
        )


def scenario_arg(scenario: Scenario) -> str:
    """How to name the scenario on the command line: its name if shipped, else its path."""
    if not scenario.source or Path(scenario.source).parent.resolve() == SCENARIO_DIR.resolve():
        return scenario.name
    return scenario.source


def rss_bytes() -> int:
    """This process's resident memory now (``/proc``; elsewhere its peak so far)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def finish(sim: Simulation, wall_s: float) -> RunResult:
    """Check the invariants and build the report of a run that has ended."""
    sc = sim.scenario
    check_started = time.perf_counter()
    live = [n for n in sim.nodes if n.live]
    agreement = invariants.convergence(live)
    check_wall_s = time.perf_counter() - check_started
    sim_s = sim.now
    m = sim.metrics
    lost = invariants.ops_lost(m.op_index, live)
    undetected = invariants.crashes_undetected(m.crashes, sim_s, sc.check.detect_within_s)
    rss_after = rss_bytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report: dict[str, Any] = {
        "scenario": sc.name,
        "core": sim.spec.name,
        "nodes": len(sim.nodes),
        "live_nodes": len(live),
        "seed": sc.seed,
        "converged": agreement.converged,
    }
    report.update(m.report(sim_s=sim_s, live_nodes=len(live), nodes=len(sim.nodes)))
    report.update(
        {
            "crashes_undetected": undetected,
            "ops_lost": lost,
            "digest_roots_distinct": agreement.roots_distinct,
            "state_hashes_distinct": agreement.state_hashes_distinct,
            "state_hashes_checked": agreement.state_hashes_checked,
            "dropped": {
                "lost": sim.net.dropped_lost,
                "partition": sim.net.dropped_partition,
                "node_down": m.dropped_node_down,
                "unknown_node": m.dropped_unknown,
            },
            "duplicated": sim.net.duplicated,
            "ops_verified": len(sim.verified),
            "events": sim.events,
            "sim_s": round(sim_s, 3),
            "wall_s": round(wall_s, 3),
            # The final check (a state_hash per node) is not part of the simulation.
            "check_wall_s": round(check_wall_s, 3),
            "speed_factor": round(sim_s / wall_s, 2) if wall_s > 0 else None,
            "events_per_wall_s": round(sim.events / wall_s) if wall_s > 0 else None,
            "memory_per_node_bytes": max(0, rss_after - sim.rss_before) // max(len(sim.nodes), 1),
            "memory_method": (
                "process RSS growth from before the nodes were built to the end of the run, "
                "divided by nodes (includes the shared op table, verification cache and metrics)"
            ),
            "peak_rss_bytes": peak,
            "bytes_source": SIZE_SOURCE,
            "core_stats": core_stats_totals(
                sim.retired_stats + [n.core.stats for n in sim.nodes if n.core is not None]
            ),
            "network": sc.network.describe(),
            "trace_hash": sim.tracer.digest.hexdigest(),
        }
    )
    report = json_safe(report)
    failures = invariants.failures(sc.check, report)
    return RunResult(sc, sim.spec.name, report, failures, m.cdf())
