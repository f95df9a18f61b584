"""Scenario files: the shipped ones load, bad ones are refused with the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulations.scenario import ScenarioError, list_scenarios, load_scenario
from tests.sim.conftest import scenario

SHIPPED = {name for name, _ in list_scenarios()}


def test_the_required_scenarios_are_shipped_with_descriptions() -> None:
    required = {"broadcast-25", "partition-heal", "churn", "fog-1000", "partition-heal-1000"}
    assert required <= SHIPPED
    assert all(description for _, description in list_scenarios())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_scenario_loads(name: str) -> None:
    assert load_scenario(name).name == name


def test_broadcast_25_is_the_maelstrom_set_up() -> None:
    sc = load_scenario("broadcast-25")
    w = sc.workload
    assert (sc.nodes, sc.network.latency, sc.network.latency_ms) == (25, "constant", 100.0)
    assert (w.ops_per_s, w.stop_s - w.start_s) == (100.0, 20.0)


def test_a_scenario_loads_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('description = "mine"\nnodes = 3\n')
    assert (load_scenario(str(path)).name, load_scenario(str(path)).nodes) == ("mine", 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodez": 3}, "unknown key.*nodez"),
        ({"network": {"latency_ms_maximum": 3}}, "unknown knob.*latency_ms_maximum"),
        ({"gossip": {"flush_interval": 0.1}}, r"\[gossip\] has unknown key"),
        ({"gossip": {"preset": "moon"}}, "use one of lan, wan, local"),
        ({"workload": {"ops_per_s": 1.0, "ops_total": 5, "stop_s": 3.0}}, "keep one"),
        ({"faults": [{"at_s": 1.0, "action": "explode"}]}, "use one of partition"),
        (
            {"faults": [{"at_s": 1.0, "action": "crash", "count": 1, "fraction": 0.5}]},
            "pick nodes by one",
        ),
        (
            {"faults": [{"at_s": 1.0, "action": "crash", "nodes": ["n9"]}]},
            "names n9, but this run has nodes n0..n4",
        ),
        ({"faults": [{"at_s": 1.0, "action": "skew", "count": 1}]}, "skew_ms.*or skew_ms_max"),
        ({"faults": [{"at_s": 1.0, "action": "restart", "disk": "gone"}]}, 'use "kept" or "lost"'),
        ({"check": {"max": {"propagation": "fast"}}}, "use a number"),
        ({"state_nodes": 0}, 'use "all" or a positive number'),
    ],
)
def test_bad_scenarios_are_refused_with_the_fix(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        scenario(data)


def test_missing_description_and_unknown_name_are_explained() -> None:
    from simulations.scenario import parse_scenario

    with pytest.raises(ScenarioError, match="needs a one-line description"):
        parse_scenario({"nodes": 3}, "x")
    with pytest.raises(ScenarioError, match=r"no scenario named 'nope'; known: .*broadcast-25"):
        load_scenario("nope")


def test_overrides_are_validated() -> None:
    sc = load_scenario("smoke-5")
    assert sc.with_overrides(nodes=9, seed=4).nodes == 9
    with pytest.raises(ScenarioError, match="at least 1 node"):
        sc.with_overrides(nodes=0)
    with pytest.raises(ScenarioError, match="names n7"):
        scenario(
            {"faults": [{"at_s": 1.0, "action": "leave", "nodes": ["n7"]}], "nodes": 8}
        ).with_overrides(nodes=4)
