"""The placement scenarios: the real placement core on a simulated fog, judged independently."""

from __future__ import annotations

import json
import re

import pytest

from node.placement.core import Answer, Fail, HostBook, Resources
from simulations import placement
from simulations.scenario import ScenarioError, load_scenario
from tests.sim.conftest import formation_sim, scenario

SEEDS = range(1, 21)
FAIL_MESSAGE = re.compile(
    r"no node has room for \d+ vCPU, \d+ MB, \d+ GB(, \d+ GPUs?)?( after \d+ asks)?; "
    r"the largest free slot is \d+ vCPU, \d+ MB, \d+ GB(, \d+ GPUs?)? on node n\d+"
)
HOST_METRICS = ("wall_s", "placements_per_wall_s")


def _small(seed: int) -> placement.PlacementSim:
    return placement.simulate(load_scenario("placement-small").with_overrides(seed=seed))


def test_placement_small_over_20_seeds() -> None:
    rescheduled = 0
    for seed in SEEDS:
        sim = _small(seed)
        m = placement.finish(sim).metrics
        assert m["double_bookings"] == 0, f"seed {seed}"
        assert m["oracle_gap"] <= 0.10, f"seed {seed}: oracle_gap {m['oracle_gap']}"
        assert m["placements"] > 0
        assert m["requests"] == m["placements"] + m["unplaceable"], f"seed {seed}"
        for req in sim.reqs:
            assert req.outcome in ("done", "fail"), f"seed {seed}: request {req.index} unresolved"
            if req.outcome == "fail":
                assert req.placement is not None
                result = req.placement.result
                assert isinstance(result, Fail)
                assert FAIL_MESSAGE.fullmatch(result.message), result.message
            else:
                assert req.done_ms >= req.arrive_ms
        rescheduled += m["rescheduled"]
    # Host deaths happen in every seed; over 20 some instances had life left to move.
    assert rescheduled > 0


def test_the_checker_catches_a_host_that_over_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    class Careless(HostBook):
        def offer(self, key: str, need: Resources) -> Answer:  # accepts whatever it is asked
            self._held[key] = need
            self._committed = self._committed + need
            return Answer(True, self.free)

    monkeypatch.setattr(placement, "HostBook", Careless)
    m = placement.finish(_small(1)).metrics
    assert m["double_bookings"] > 0


def _cli_json(seed: int, hash_seed: str) -> dict[str, object]:
    stdout = formation_sim(
        "run", "placement-small", "--seed", str(seed), "--json", hash_seed=hash_seed
    )
    data: dict[str, object] = json.loads(stdout)
    return {k: v for k, v in data.items() if k not in HOST_METRICS}


def test_same_seed_gives_identical_json_across_processes_and_hash_seeds() -> None:
    first = _cli_json(5, "1")
    assert first == _cli_json(5, "2")
    assert first["trace_hash"] != _cli_json(6, "1")["trace_hash"]


def test_the_table_and_the_sweep_work_on_a_placement_scenario() -> None:
    table = formation_sim("run", "placement-small", "--seed", "2")
    assert "double bookings  0" in table
    report = json.loads(formation_sim("sweep", "placement-small", "--seeds", "1..3", "--json"))
    assert report["runs"] == 3
    assert report["metrics"]["double_bookings"]["max"] == 0
    assert (
        report["metrics"]["placements_per_s"]["worst"]
        == report["metrics"]["placements_per_s"]["min"]
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"placement": {"policy": "random"}}, "placement.policy = 'random'"),
        ({"placement": {"choices": 0}}, "placement.choices = 0"),
        ({"placement": {"colour": 1}}, "unknown key(s) colour"),
        ({"placement": {"start_s": 5.0, "stop_s": 1.0}}, "must be after start_s"),
        (
            {"placement": {}, "faults": [{"at_s": 1.0, "action": "partition", "sides": 2}]},
            "takes only crash, churn faults",
        ),
    ],
)
def test_bad_placement_scenarios_are_refused_clearly(
    data: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ScenarioError, match=re.escape(fragment)):
        scenario(data)


def test_a_placement_scenario_does_not_check_gossip_convergence() -> None:
    sc = scenario({"nodes": 5, "duration_s": 2.0, "placement": {"stop_s": 1.0}})
    assert sc.placement is not None
    assert sc.check.converged is False
    result = placement.run_placement(sc)
    assert result.failures == []
    assert (
        result.metrics["requests"] == result.metrics["placements"] + result.metrics["unplaceable"]
    )
