"""``formation-sim run --trace``: the propagation figures recomputed from the file alone equal
the ones the run printed, exactly (issue 14 §4). About 3 s."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from simulations import trace_metrics
from simulations.cli import main
from simulations.cores import load_core
from simulations.engine import Simulation
from simulations.scenario import load_scenario
from simulations.trace import CHUNK
from tests.sim.conftest import SIM_CORE, run, simulated

FIGURES = (
    "ops",
    "propagation_ms_p50",
    "propagation_ms_p99",
    "propagation_ms_max",
    "time_to_99pct_ms_p50",
    "time_to_99pct_ms_max",
    "ops_not_reaching_99pct",
    "trace_hash",
)


def _run_traced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str
) -> tuple[dict[str, Any], Path]:
    trace = tmp_path / "trace.jsonl"
    code = main(["run", *argv, "--core", SIM_CORE, "--json", "--trace", str(trace)])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0, printed["checks_failed"]
    return printed, trace


# smoke-5; churn-small: crashes with the disk kept and lost, a join, a leave (log births that
# exclude catch-up from propagation); faults-small: loss, duplicates, skewed clocks (deferred
# ops), a slow node.
@pytest.mark.parametrize(
    ("name", "seed"), [("smoke-5", "1"), ("churn-small", "3"), ("faults-small", "2")]
)
def test_figures_recomputed_from_the_trace_equal_the_printed_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, seed: str
) -> None:
    printed, trace = _run_traced(capsys, tmp_path, name, "--seed", seed)
    got = trace_metrics.figures(trace_metrics.read_trace(str(trace)))
    assert printed["ops"] > 0
    assert got["arrivals"] > 0
    assert {k: got[k] for k in FIGURES} == {k: printed[k] for k in FIGURES}
    assert got["complete"]
    assert got["trace_hash_ok"]
    # The header's node count is the scenario's at the start (joins come later).
    assert (got["scenario"], got["seed"]) == (name, int(seed))
    assert got["nodes"] == load_scenario(name).nodes


def test_the_trace_records_writes_and_every_first_arrival(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    printed, trace = _run_traced(capsys, tmp_path, "smoke-5")
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert records[0]["k"] == "h"
    assert records[0]["format"] == "formation-sim-trace"
    writes = [r for r in records if r["k"] == "w"]
    firsts = [r for r in records if r["k"] == "d" and r["first"]]
    assert len(writes) == printed["ops"]
    # Five nodes up the whole run: every op reaches the four others once.
    assert len(firsts) == 4 * printed["ops"]
    writer = {w["op"]: w for w in writes}
    assert all(d["node"] != writer[d["op"]]["node"] for d in firsts)
    assert all(d["t_ms"] > writer[d["op"]]["t_ms"] for d in firsts)


def test_a_trace_does_not_change_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    printed, _ = _run_traced(capsys, tmp_path, "faults-small")
    printed.pop("checks_failed")
    assert simulated(printed) == simulated(run("faults-small").metrics)


class _Chunks(io.StringIO):
    """A file that remembers how many lines each write carried."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def write(self, s: str) -> int:
        self.writes.append(s.count("\n"))
        return super().write(s)


def test_the_trace_is_streamed_in_bounded_chunks() -> None:
    sc = load_scenario("churn-small").with_overrides(core=SIM_CORE)
    out = _Chunks()
    Simulation(sc, load_core(SIM_CORE), trace=out).run()
    lines = out.getvalue().count("\n")
    assert lines > CHUNK
    # One event adds at most a packet's records (its ops) past CHUNK before the flush.
    assert max(out.writes) <= 2 * CHUNK
    # The header, at least one chunk during the run, and the rest with the end line.
    assert len(out.writes) >= 3 + (lines - 2) // (2 * CHUNK)


def test_trace_metrics_cli_prints_json_and_refuses_what_is_not_a_trace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    printed, trace = _run_traced(capsys, tmp_path, "smoke-5")
    assert trace_metrics.main([str(trace)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["propagation_ms_max"] == printed["propagation_ms_max"]
    # Cut short: the figures of what is there, and the file says it is incomplete.
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(trace.read_text().splitlines(keepends=True)[:-200]))
    assert trace_metrics.main([str(cut)]) == 0
    short = json.loads(capsys.readouterr().out)
    assert not short["complete"]
    assert not short["trace_hash_ok"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("0.25 P 3 n1 1 0 2\n")
    assert trace_metrics.main([str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert trace_metrics.main([]) == 2
    assert "usage" in capsys.readouterr().err
