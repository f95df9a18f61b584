"""The mesh scenarios: nodes join at once, claim addresses with the real rule, none twice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from simulations import mesh
from simulations.scenario import ScenarioError, load_scenario, parse_scenario
from tests.sim.conftest import formation_sim

SEEDS = range(1, 21)
HOST_METRICS = ("wall_s",)


def _small(seed: int, **overrides: Any) -> dict[str, Any]:
    scenario = load_scenario("mesh-small").with_overrides(seed=seed, **overrides)
    result = mesh.run_mesh(scenario)
    assert result.failures == [] or overrides, f"seed {seed}: {result.failures}"
    return result.metrics


def test_mesh_small_over_20_seeds_holds_no_address_twice() -> None:
    collisions = 0
    for seed in SEEDS:
        m = _small(seed)
        assert m["duplicate_addresses"] == 0, f"seed {seed}"
        assert m["lost_at_end"] == 0, f"seed {seed}"
        assert m["unclaimed"] == 0, f"seed {seed}"
        # The real mesh.claim ops, applied shuffled to a State, give the same addresses.
        assert m["ledger_mismatches"] == 0, f"seed {seed}"
        assert m["claims"] == m["nodes"] + m["reclaims"], f"seed {seed}"
        assert m["reclaims"] >= m["first_claim_collisions"], f"seed {seed}"
        collisions += m["first_claim_collisions"]
    # The crowded /22 makes the seeds collide: the re-claim path is what is being tested.
    assert collisions >= 10


def test_a_loser_that_never_reclaims_shows_as_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh.MeshSim, "_reclaim", lambda self, v, mine_id: None)
    worst = max((_small(seed, duration_s=5.0) for seed in SEEDS), key=lambda m: m["lost_at_end"])
    assert worst["duplicate_addresses"] > 0
    assert worst["lost_at_end"] > 0
    assert worst["reclaims"] == 0


def test_a_candidate_order_that_ignores_the_view_shows_as_duplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mesh, "next_candidate", lambda subject, taken, cidr, attempt: "10.42.0.1")
    # Small and short: every loser re-claims the one address again and again.
    data = {"description": "x", "nodes": 8, "duration_s": 1.0, "mesh": {"cidr": "10.42.0.0/24"}}
    m = mesh.run_mesh(parse_scenario(data, "same-address")).metrics
    assert m["duplicate_addresses"] == 1
    assert m["lost_at_end"] == m["nodes"] - 1


def _cli_json(seed: int, hash_seed: str) -> dict[str, object]:
    stdout = formation_sim("run", "mesh-small", "--seed", str(seed), "--json", hash_seed=hash_seed)
    data: dict[str, object] = json.loads(stdout)
    return {k: v for k, v in data.items() if k not in HOST_METRICS}


def test_same_seed_gives_identical_json_across_processes_and_hash_seeds() -> None:
    first = _cli_json(4, "1")
    assert first == _cli_json(4, "2")
    assert first["trace_hash"] != _cli_json(5, "1")["trace_hash"]


def test_the_table_and_the_sweep_work_on_a_mesh_scenario() -> None:
    table = formation_sim("run", "mesh-small", "--seed", "2")
    assert "0 duplicate addresses" in table
    report = json.loads(formation_sim("sweep", "mesh-small", "--seeds", "1..3", "--json"))
    assert report["runs"] == 3
    assert report["metrics"]["duplicate_addresses"]["max"] == 0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"mesh": {"colour": 1}}, "unknown key(s) colour"),
        ({"mesh": {"cidr": "10.42.0.0/30"}}, "/8 to /24"),
        ({"mesh": {"gossip_ms_min": 9.0, "gossip_ms_max": 1.0}}, "swap them"),
        ({"mesh": {"ledger_check": True, "cidr": "10.7.0.0/16"}}, "inside its range"),
        ({"mesh": {"join_spread_ms": -1}}, "mesh.join_spread_ms = -1"),
        (
            {"mesh": {}, "faults": [{"at_s": 1.0, "action": "crash", "count": 1}]},
            "takes no faults",
        ),
        ({"mesh": {}, "placement": {}}, "not both"),
    ],
)
def test_bad_mesh_tables_are_refused_by_name(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario({"description": "x", **data}, "bad")
    assert fragment in str(caught.value)
