"""formation-sim: list, run (table, JSON, plot, trace), exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.cli import main
from tests.sim.conftest import SIM_CORE

REQUIRED_KEYS = {
    "nodes",
    "seed",
    "ops",
    "converged",
    "propagation_ms_p50",
    "propagation_ms_p99",
    "propagation_ms_max",
    "msgs_per_op",
    "bytes_per_node_per_s",
    "trace_hash",
    "sim_s",
    "wall_s",
    "speed_factor",
    "payload_copies_per_op",
    "false_suspicions",
    "memory_per_node_bytes",
    "time_to_99pct_ms_p50",
    "heal_converge_s",
}


def test_list_shows_names_and_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "broadcast-25" in out
    assert "Maelstrom" in out


def test_run_json_prints_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "smoke-5", "--core", SIM_CORE, "--json", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data.keys() >= REQUIRED_KEYS
    assert (data["seed"], data["converged"], data["checks_failed"]) == (3, True, [])


def test_run_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "smoke-5", "--core", SIM_CORE, "--nodes", "4"]) == 0
    out = capsys.readouterr().out
    wanted = ("PROPAGATION", "p50 / p99 / max", "trace_hash")
    assert [word for word in wanted if word not in out] == []


def test_a_failed_check_exits_1_and_says_how_to_reproduce(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "strict.toml"
    path.write_text(
        'description = "impossible bound"\nnodes = 3\nduration_s = 3.0\n'
        "[workload]\nops_per_s = 10.0\nstart_s = 0.5\nstop_s = 2.0\n"
        "[check.max]\nmsgs_per_op = 0.5\n"
    )
    assert main(["run", str(path), "--core", SIM_CORE, "--seed", "9"]) == 1
    out = capsys.readouterr().out
    assert "CHECK FAILED: msgs_per_op" in out
    assert f"reproduce with: formation-sim run {path} --nodes 3 --seed 9 --core {SIM_CORE}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "no-such-scenario"], "no scenario named"),
        (["run", "smoke-5", "--nodes", "0"], "at least 1 node"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--core", SIM_CORE]) == 2
    assert message in capsys.readouterr().err


def test_plot_draws_the_cdf(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # in the dev group: installed by `make test`
    png = tmp_path / "cdf.png"
    assert main(["run", "smoke-5", "--core", SIM_CORE, "--json", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
