"""Every fault scenario converges: identical digests and state hashes on every live node."""

from __future__ import annotations

import pytest

from tests.sim.conftest import run, scenario

SEEDS = (1, 2, 3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["smoke-5", "faults-small", "partition-small", "churn-small"])
def test_fault_scenario_converges(name: str, seed: int) -> None:
    result = run(name, seed=seed)
    assert result.failures == [], f"{result.failures}; {result.reproduce()}"
    m = result.metrics
    assert (m["converged"], m["digest_roots_distinct"], m["state_hashes_distinct"]) == (True, 1, 1)
    assert m["ops"] > 0
    if name != "churn-small":
        # (Under churn, a node that loses its disk before its first flush loses its last ops:
        # no replica ever held them. Everywhere else nothing may be lost.)
        assert m["ops_lost"] == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_partition_heal_converges_and_is_timed(seed: int) -> None:
    result = run("partition-heal", nodes=16, seed=seed)
    m = result.metrics
    assert result.failures == [], f"{result.failures}; {result.reproduce()}"
    assert m["dropped"]["partition"] > 0  # the split really cut traffic
    assert m["heal_converge_s"] is not None
    assert m["heals_not_converged"] == 0


def test_every_op_reaches_every_node_and_each_is_verified_once() -> None:
    result = run("smoke-5")
    m = result.metrics
    # 5 nodes, none joined late: each op arrives at the 4 nodes that did not write it.
    assert m["ops_not_reaching_99pct"] == 0
    assert m["ops_verified"] == m["ops"]


def test_a_node_that_loses_its_disk_catches_up_on_history() -> None:
    sc = scenario(
        {
            "nodes": 4,
            "duration_s": 20.0,
            "network": {"latency": "constant", "latency_ms": 5.0},
            "workload": {"ops_per_s": 20.0, "start_s": 0.5, "stop_s": 4.0},
            "faults": [
                {"at_s": 5.0, "action": "crash", "nodes": ["n3"]},
                {"at_s": 6.0, "action": "restart", "nodes": ["n3"], "disk": "lost"},
            ],
        }
    )
    m = run(sc).metrics
    assert (m["converged"], m["live_nodes"], m["crashes"]) == (True, 4, 1)


def test_ops_written_only_on_one_side_of_a_lasting_partition_do_not_converge() -> None:
    # The negative control: if this passed, the convergence checks would be vacuous.
    sc = scenario(
        {
            "nodes": 6,
            "duration_s": 10.0,
            "network": {"latency": "constant", "latency_ms": 5.0},
            "workload": {"ops_per_s": 20.0, "start_s": 2.0, "stop_s": 8.0},
            "faults": [{"at_s": 1.0, "action": "partition", "sides": 2}],
        }
    )
    result = run(sc)
    assert result.metrics["converged"] is False
    assert result.metrics["digest_roots_distinct"] == 2
    assert any("not converged" in f for f in result.failures)


def test_ops_from_a_clock_far_ahead_are_deferred_then_accepted() -> None:
    # n0's wall clock jumps 90 s ahead: its ops are more than the HLC's 60 s drift limit in
    # the others' future, so they are held back (node.replica's rule) until real time gets
    # within 60 s of them, and anti-entropy offers them again.
    sc = scenario(
        {
            "nodes": 4,
            "duration_s": 60.0,
            "stop_when_settled": True,
            "settle_margin_s": 0.5,
            "network": {"latency": "constant", "latency_ms": 5.0},
            "workload": {"ops_per_s": 5.0, "start_s": 1.0, "stop_s": 6.0},
            "faults": [{"at_s": 0.5, "action": "skew", "nodes": ["n0"], "skew_ms": 90_000.0}],
        }
    )
    m = run(sc).metrics
    assert m["ops_deferred"] > 0
    assert m["converged"] is True
    assert m["settle_s"] is not None
    assert m["sim_s"] > 30.0  # nothing from n0 could be accepted before t = 30 s
