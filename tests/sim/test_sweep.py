"""formation-sim sweep: the JSON shape, the per-metric summary and worst-seed reporting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.cli import main
from simulations.scenario import ScenarioError
from simulations.sweep import SeedRun, parse_seeds, summarize
from tests.sim.conftest import SIM_CORE

# A scenario small enough to run several seeds in a second or two.
_TINY = """
description = "sweep test: 3 nodes, a few ops"
nodes = 3
duration_s = 4.0
[workload]
ops_per_s = 20.0
start_s = 1.0
stop_s = 2.0
[check]
converged = true
"""


def _tiny(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(_TINY + extra)
    return str(path)


def test_parse_seeds_ranges_lists_and_mixes() -> None:
    assert parse_seeds("1..4") == [1, 2, 3, 4]
    assert parse_seeds("7") == [7]
    assert parse_seeds("3,1,2..3") == [1, 2, 3]
    for bad in ("5..1", "a..b", "1..", ""):
        with pytest.raises(ScenarioError):
            parse_seeds(bad)


def test_summarize_reports_spread_and_worst_seed() -> None:
    runs = [
        SeedRun(
            seed, {"propagation_ms_max": value, "converged": conv, "nested": {"a": seed}}, [], ""
        )
        for seed, value, conv in (
            (1, 300.0, True),
            (2, 900.0, False),
            (3, 900.0, True),
            (4, 100.0, True),
        )
    ]
    out = summarize(runs)
    assert out["propagation_ms_max"] == {
        "min": 100,
        "median": 300,
        "p99": 900,
        "max": 900,
        "worst": 900,
        "worst_seed": 2,  # a tie goes to the lowest seed
        "seeds": 4,
    }
    # converged is better when true: the worst seed is the one that did not converge.
    assert (out["converged"]["worst"], out["converged"]["worst_seed"]) == (0, 2)
    assert out["nested.a"]["worst_seed"] == 4


def test_sweep_json_shape_and_worst_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = _tiny(tmp_path)
    assert main(["sweep", scenario, "--seeds", "1..3", "--core", SIM_CORE, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == [1, 2, 3]
    assert (report["runs"], report["seeds_failed"], report["checks_failed"]) == (3, [], {})
    assert sorted(report["trace_hashes"]) == ["1", "2", "3"]
    row = report["metrics"]["propagation_ms_max"]
    assert row.keys() == {"min", "median", "p99", "max", "worst", "worst_seed", "seeds"}
    assert row["min"] <= row["median"] <= row["p99"] <= row["max"] == row["worst"]
    assert row["seeds"] == 3
    # The worst seed really is the one whose run has that value.
    assert (
        main(["run", scenario, "--seed", str(row["worst_seed"]), "--core", SIM_CORE, "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["propagation_ms_max"] == row["worst"]
    assert report["metrics"]["messages_by_kind.Gossip"]["min"] > 0


def test_sweep_does_not_depend_on_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = _tiny(tmp_path)
    reports = []
    for jobs in ("1", "2"):
        assert (
            main(
                ["sweep", scenario, "--seeds", "1..2", "--jobs", jobs, "--core", SIM_CORE, "--json"]
            )
            == 0
        )
        reports.append(json.loads(capsys.readouterr().out))
    for report in reports:
        report.pop("jobs")
        for name in (
            "wall_s",
            "check_wall_s",
            "speed_factor",
            "events_per_wall_s",
            "memory_per_node_bytes",
            "peak_rss_bytes",
        ):
            report["metrics"].pop(name)
    assert reports[0] == reports[1]


def test_a_failed_check_on_one_seed_exits_1_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = _tiny(tmp_path, "[check.max]\npropagation_ms_max = 0.001\n")
    assert main(["sweep", scenario, "--seeds", "1..2", "--core", SIM_CORE, "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["seeds_failed"] == [1, 2]
    assert "--seed 2" in report["reproduce"]["2"]
    assert "reproduce with:" in captured.err


def test_sweep_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", _tiny(tmp_path), "--seeds", "1..2", "--core", SIM_CORE]) == 0
    out = capsys.readouterr().out
    assert "propagation_ms_max" in out
    assert "worst seed" in out


def test_a_bad_seed_range_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "smoke-5", "--seeds", "9..1"]) == 2
    assert "--seeds 9..1" in capsys.readouterr().err
