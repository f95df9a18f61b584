"""Membership: a crashed node is reported dead, and nobody healthy is (needs the real core)."""

from __future__ import annotations

import pytest

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
