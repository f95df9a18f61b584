"""The runs that replace a gossip run: which one a scenario's table selects.

A scenario with ``[placement]`` is a placement run (``simulations.placement``), one with
``[mesh]`` a mesh address run (``simulations.mesh``), one with ``[ledger]`` a billing run
(``simulations.ledger``); ``engine.run_scenario`` asks here first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from simulations.ledger import run_ledger
from simulations.mesh import run_mesh
from simulations.placement import run_placement
from simulations.report import RunResult
from simulations.scenario import Scenario

__all__ = ["SpecialRun", "special_run"]

SpecialRun = Callable[..., RunResult]


def special_run(scenario: Scenario) -> SpecialRun | None:
    """The runner of a ``[placement]`` or ``[mesh]`` scenario; None for a gossip run."""
    if scenario.mesh is not None:
        return _mesh
    if scenario.placement is not None:
        return run_placement
    if scenario.ledger is not None:
        return _ledger
    return None


def _mesh(
    scenario: Scenario, core_name: str, *, trace: IO[str] | None = None, progress: Any = None
) -> RunResult:
    # A mesh run is over in well under a second of wall time per 1,000 nodes: no progress bar.
    return run_mesh(scenario, core_name, trace=trace)


def _ledger(
    scenario: Scenario, core_name: str, *, trace: IO[str] | None = None, progress: Any = None
) -> RunResult:
    # A ledger run takes tens of ms of wall time per seed: no progress bar.
    return run_ledger(scenario, core_name, trace=trace)
