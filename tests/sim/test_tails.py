"""CI sweeps (issue 14 §2): the tails hold on every seed, not on the seeds someone looked at.

* broadcast-25 over seeds 1..50: ``propagation_ms_max`` < 600 ms and every op at 99 % of the
  nodes, on every seed;
* each small fault scenario over seeds 1..200: converged, one digest root and one state hash,
  the scenario's own checks held, on every seed, and nothing lost where no disk is lost.

``simulations.sweep.sweep`` in-process with 2 worker processes, as ``formation-sim sweep
SCENARIO --seeds A..B --jobs 2 --json`` runs it. A failure names the seeds and the command
that reproduces each. Runtime: see docs/decisions.md D21 (measured per piece).
"""

from __future__ import annotations

from typing import Any

import pytest

from simulations.sweep import sweep
from tests.sim.conftest import SIM_CORE

pytestmark = pytest.mark.slow

FAULT_SCENARIOS = ("smoke-5", "churn-small", "faults-small", "partition-small", "crash-detect")
BROADCAST_SEEDS = range(1, 51)
FAULT_SEEDS = range(1, 201)
PROPAGATION_MS_MAX = 600.0
# Where a node's disk dies with it (crash-detect: one crashes for good; churn-small: crashes
# that lose the disk), an op it wrote less than a flush interval (25 ms) before the crash has
# not left it yet: it is gone, as on any system that answers a write before replicating it.
# crash-detect seed 55: n4 wrote 3af60cdf... at 4,986.2 ms, its outbox was due at 5,011.2 ms,
# it crashed at 5,000 ms. Elsewhere nothing may be lost.
OPS_MAY_DIE_WITH_A_DISK = frozenset({"crash-detect", "churn-small"})


def _sweep(name: str, seeds: range) -> dict[str, Any]:
    report = sweep(name, list(seeds), core_name=SIM_CORE, jobs=2)
    assert report["runs"] == len(seeds)
    failed = {seed: report["reproduce"][str(seed)] for seed in report["seeds_failed"]}
    assert not failed, f"checks failed: {report['checks_failed']}; reproduce with: {failed}"
    return report


def _worst(report: dict[str, Any], metric: str) -> str:
    row = report["metrics"][metric]
    return f"{metric}: worst {row['worst']} on seed {row['worst_seed']}"


def test_broadcast_25_propagation_tail_on_every_seed() -> None:
    report = _sweep("broadcast-25", BROADCAST_SEEDS)
    m = report["metrics"]
    assert m["propagation_ms_max"]["seeds"] == len(BROADCAST_SEEDS)
    assert m["propagation_ms_max"]["max"] < PROPAGATION_MS_MAX, _worst(report, "propagation_ms_max")
    assert m["ops_not_reaching_99pct"]["max"] == 0, _worst(report, "ops_not_reaching_99pct")
    assert m["ops"]["min"] > 0
    assert m["converged"]["min"] == 1, _worst(report, "converged")


@pytest.mark.parametrize("name", FAULT_SCENARIOS)
def test_fault_scenario_converges_on_every_seed(name: str) -> None:
    report = _sweep(name, FAULT_SEEDS)
    m = report["metrics"]
    assert m["converged"]["seeds"] == len(FAULT_SEEDS)
    assert m["converged"]["min"] == 1, _worst(report, "converged")
    assert m["digest_roots_distinct"]["max"] == 1, _worst(report, "digest_roots_distinct")
    assert m["state_hashes_distinct"]["max"] == 1, _worst(report, "state_hashes_distinct")
    if name not in OPS_MAY_DIE_WITH_A_DISK:
        assert m["ops_lost"]["max"] == 0, _worst(report, "ops_lost")
    assert m["ops"]["min"] > 0
    # Every seed ran its own randomness (a sweep that ran one seed 200 times would pass the rest).
    assert len(set(report["trace_hashes"].values())) == len(FAULT_SEEDS)
