"""The ledger scenarios: a fog spends credits through the real billing core, under attack."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node.ledger import billing
from simulations.ledger import run_ledger, run_ledger_seeds
from simulations.scenario import ScenarioError, load_scenario, parse_scenario
from tests.sim.conftest import formation_sim


@pytest.mark.slow
def test_ledger_over_1000_seeds_has_no_violation_and_decides_locally() -> None:
    report = run_ledger_seeds(load_scenario("ledger"), range(1, 1001))
    assert report["seeds"] == 1000
    assert report["nodes"] >= 20
    assert report["invariant_violations"] == []
    assert report["checks_failed"] == {}
    # Rights provisioned at twice the demand: nearly every spend is decided alone.
    assert report["local_decision_fraction"] >= 0.99
    # The adversarial paths ran: overdraws asked peers, forged ops were refused, double
    # submits and orders sent to the wrong node had no effect.
    assert report["asks_sent"] > 0
    assert report["refused_spends"] > 0
    assert report["forged_refused"] > 0
    assert report["duplicates_noop"] > 0
    assert report["wrong_node_refused"] > 0


def test_ledger_small_asks_grants_and_refuses_without_violation() -> None:
    totals: dict[str, int] = {}
    for seed in range(1, 9):
        result = run_ledger(load_scenario("ledger-small").with_overrides(seed=seed))
        assert result.metrics["violations"] == [], f"seed {seed}"
        assert result.failures == [], f"seed {seed}"
        for name in ("grants", "accepts", "refused_spends", "asks_lost", "draws", "releases"):
            totals[name] = totals.get(name, 0) + result.metrics[name]
    # Provisioned below demand, across a partition: rights move and spends are refused.
    assert totals["grants"] > 0
    assert totals["accepts"] == totals["grants"]
    assert totals["refused_spends"] > 0
    assert totals["asks_lost"] > 0
    assert totals["draws"] > 0
    assert totals["releases"] > 0


def test_a_core_that_skips_the_rights_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Break rule 2: a transfer the rights cannot cover goes through. The core's own guard and
    # the simulator's checks must both see it (the byzantine node overdraws every seed).
    real = billing._Book.evaluate

    def lax(self: Any, node: str, seq: int, entry: dict[str, Any]) -> str | None:
        if entry["k"] == "transfer" and self.rights.get((entry["by"], node), 0) < entry["amount"]:
            self.keys.add((node, entry["by"], entry["key"]))
            self.rights[(entry["by"], node)] = (
                self.rights.get((entry["by"], node), 0) - entry["amount"]
            )
            return "ok"
        return real(self, node, seq, entry)

    monkeypatch.setattr(billing._Book, "evaluate", lax)
    result = run_ledger(load_scenario("ledger").with_overrides(seed=3))
    kinds = {v["invariant"] for v in result.metrics["violations"]}
    assert "overdraw_accepted" in kinds
    assert result.metrics["invariant_violations"] > 0
    assert all(v["seed"] == 3 for v in result.metrics["violations"])
    assert result.failures


def test_a_driver_that_ignores_idempotency_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(billing, "executed", lambda *args: False)
    real = billing._Book.evaluate

    def forgetful(self: Any, node: str, seq: int, entry: dict[str, Any]) -> str | None:
        if entry["k"] in ("mint", "transfer", "hold"):
            self.keys.discard((node, entry["by"], entry["key"]))
        return real(self, node, seq, entry)

    monkeypatch.setattr(billing._Book, "evaluate", forgetful)
    worst = max(
        (run_ledger(load_scenario("ledger").with_overrides(seed=s)).metrics for s in range(1, 6)),
        key=lambda m: m["invariant_violations"],
    )
    kinds = {v["invariant"] for v in worst["violations"]}
    assert "idempotency_key_twice" in kinds


def test_same_seed_gives_identical_json_across_processes() -> None:
    def run(seed: int, hash_seed: str) -> dict[str, Any]:
        out = formation_sim("run", "ledger", "--seed", str(seed), "--json", hash_seed=hash_seed)
        data: dict[str, Any] = json.loads(out)
        return {k: v for k, v in data.items() if k not in ("wall_s", "ops_per_s")}

    first = run(4, "1")
    assert first == run(4, "2")
    assert first["trace_hash"] != run(5, "1")["trace_hash"]
    assert first["invariant_violations"] == 0


def test_run_seeds_cli_reports_the_summed_metrics() -> None:
    report = json.loads(formation_sim("run", "ledger", "--seeds", "3", "--json"))
    assert report["seeds"] == 3
    for name in ("invariant_violations", "local_decision_fraction", "refused_spends", "ops_per_s"):
        assert name in report
    assert report["invariant_violations"] == []
    table = formation_sim("run", "ledger-small", "--seeds", "2")
    assert "invariant violations  0" in table


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"ledger": {"colour": 1}}, "unknown key(s) colour"),
        ({"ledger": {"hot_fraction": 2}}, "fraction in 0..1"),
        ({"ledger": {"gossip_ms_min": 9.0, "gossip_ms_max": 1.0}}, "swap them"),
        ({"ledger": {"accounts": 0}}, "integer >= 1"),
        ({"ledger": {"partition": 1}}, "true or false"),
        ({"ledger": {"provision_factor": 0}}, "above 0"),
        (
            {"ledger": {}, "faults": [{"at_s": 1.0, "action": "crash", "count": 1}]},
            "takes no [[faults]]",
        ),
        ({"ledger": {}, "mesh": {}}, "one of [placement], [mesh] or [ledger]"),
    ],
)
def test_bad_ledger_tables_are_refused_by_name(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario({"description": "x", **data}, "bad")
    assert fragment in str(caught.value)
