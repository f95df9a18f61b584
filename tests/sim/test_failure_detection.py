"""Membership: a crashed node is reported dead, and nobody healthy is (needs the real core)."""

from __future__ import annotations

import pytest

from node.gossip.messages import Notify
from node.gossip.suspicion import (
    suspicion_confirmations,
    suspicion_timeout_s,
    suspicion_timeouts,
)
from simulations.cores import load_core
from simulations.engine import Simulation, run_scenario
from simulations.nodes import SimNode
from simulations.scenario import load_scenario
from tests.sim.conftest import run


def _require_core() -> None:
    try:
        import node.gossip.core  # noqa: F401
    except ImportError:
        pytest.skip("needs node.gossip.core")


@pytest.mark.parametrize("seed", [1, 2])
def test_a_crashed_node_is_eventually_reported_dead(seed: int) -> None:
    _require_core()
    result = run("crash-detect", core="gossip", seed=seed)
    m = result.metrics
    assert result.failures == [], f"{result.failures}; {result.reproduce()}"
    assert (m["crashes"], m["crashes_undetected"]) == (1, 0)
    assert m["dead_detect_s_first_max"] is not None
    assert m["false_suspicions"] == 0


class _Reports:
    """Every suspect/dead report the engine sees, and the dead ones it judged false."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, str, str, str]] = []  # (time, observer, event, about)
        self.false_deaths: list[str] = []


def _record_reports(monkeypatch: pytest.MonkeyPatch) -> _Reports:
    seen = _Reports()
    original = Simulation._notify

    def recording(self: Simulation, node: SimNode, at: float, notify: Notify) -> None:
        before = self.metrics.false_suspicions
        original(self, node, at, notify)
        if notify.event in ("suspect", "dead"):
            seen.reports.append((at, node.node_id, notify.event, notify.node))
        if notify.event == "dead" and self.metrics.false_suspicions > before:
            seen.false_deaths.append(f"{at:.3f}s {node.node_id} declared {notify.node} dead")

    monkeypatch.setattr(Simulation, "_notify", recording)
    return seen


@pytest.mark.parametrize("seed", range(1, 13))
def test_churn_declares_no_live_node_dead(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Faster confirmations must not turn churn and 2 % loss into deaths: a live member that
    # is suspected (it happens, and is counted in false_suspicions) refutes within min_s.
    _require_core()
    seen = _record_reports(monkeypatch)
    result = run("churn-small", core="gossip", seed=seed)
    assert result.failures == [], f"{result.failures}; {result.reproduce()}"
    assert seen.false_deaths == [], (seen.false_deaths, result.reproduce())


@pytest.mark.parametrize("seed", range(1, 21))
def test_confirmations_shrink_the_timer_so_every_survivor_declares_within_min(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lifeguard: every survivor probes the crashed node and says so, so each survivor hears
    # the k independent confirmations its timer expects and declares the crash dead min_s
    # after it began to suspect (not after the 11.4 s a lone confirmation leaves at N=8).
    _require_core()
    seen = _record_reports(monkeypatch)
    reports = seen.reports
    sc = load_scenario("crash-detect").with_overrides(seed=seed, core="gossip")
    result = run_scenario(sc, load_core("gossip"))
    assert result.failures == [], f"{result.failures}; {result.reproduce()}"
    assert seen.false_deaths == [], (seen.false_deaths, result.reproduce())
    min_s, max_s = suspicion_timeouts(sc.gossip, sc.nodes)
    assert suspicion_confirmations(sc.gossip, sc.nodes) == 2
    assert max_s > 2 * min_s
    suspected: dict[str, float] = {}
    dead: dict[str, float] = {}
    for at, observer, event, _about in reports:
        (suspected if event == "suspect" else dead).setdefault(observer, at)
    crashed = {about for _, _, _, about in reports}
    assert len(crashed) == 1, reports
    survivors = {f"n{i}" for i in range(sc.nodes)} - crashed
    assert set(dead) == survivors, f"not every survivor declared it dead: {reports}"
    one_confirmation_s = suspicion_timeout_s(1, 2, min_s, max_s)
    # The last confirmation may come from a survivor whose probe of the crashed node is still
    # running when min_s is up (a probe takes 3 x probe_timeout_s); the timer then fires on
    # its arrival.
    bound_s = min_s + 3 * sc.gossip.probe_timeout_s
    assert bound_s < one_confirmation_s
    waits_s = []
    for observer, at in dead.items():
        # One that heard "dead" before it suspected on its own waited for nobody.
        waits_s.append(at - suspected.get(observer, at))
        assert waits_s[-1] <= bound_s, (observer, waits_s[-1], result.reproduce())
    assert sorted(waits_s)[len(waits_s) // 2] <= min_s + 0.05, (waits_s, result.reproduce())
    assert max(dead.values()) - min(suspected.values()) <= bound_s + 1.0, reports
