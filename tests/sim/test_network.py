"""The link model: latency distributions, loss, duplicates, bandwidth and partitions."""

from __future__ import annotations

import random
from typing import Any

import pytest

from simulations.network import BRIDGE, LinkConfig, Network


def _net(nodes: int = 4, **knobs: Any) -> Network:
    return Network(LinkConfig(**knobs), random.Random(5), nodes)


def test_constant_latency_is_exact() -> None:
    assert _net(latency="constant", latency_ms=100.0).route(0, 1, 2.0, 100) == pytest.approx(2.1)


def test_uniform_latency_stays_in_range_and_spreads() -> None:
    net = _net(latency="uniform", latency_ms_min=20.0, latency_ms_max=100.0)
    delays = [net.route(0, 1, 0.0, 100) for _ in range(2000)]
    assert 0.020 <= min(delays) < 0.025
    assert 0.095 < max(delays) <= 0.100


@pytest.mark.parametrize(
    "knobs",
    [
        {
            "latency": "lognormal",
            "latency_ms_median": 30.0,
            "latency_sigma": 1.0,
            "latency_ms_max": 250.0,
        },
        {
            "latency": "pareto",
            "latency_ms_min": 10.0,
            "latency_pareto_alpha": 1.2,
            "latency_ms_max": 250.0,
        },
    ],
)
def test_heavy_tails_are_capped(knobs: dict[str, Any]) -> None:
    net = _net(**knobs)
    delays = [net.route(0, 1, 0.0, 100) for _ in range(5000)]
    assert max(delays) == pytest.approx(0.250)
    assert sorted(delays)[2500] < 0.060  # the median is far below the cap


def test_per_link_latency_is_fixed_per_direction() -> None:
    net = _net(latency="uniform", latency_ms_min=10.0, latency_ms_max=90.0, latency_per_link=True)
    assert len({net.route(0, 1, 0.0, 100) for _ in range(10)}) == 1
    assert net.route(0, 1, 0.0, 100) != net.route(1, 0, 0.0, 100)


def test_loss_and_duplication_ratios_are_honoured() -> None:
    net = _net(loss_ratio=0.25, duplicate_ratio=0.1)
    sent = 20_000
    arrived = sum(net.route(0, 1, 0.0, 100) >= 0 for _ in range(sent))
    dups = sum(net.duplicate(0, 1, 0.0) >= 0 for _ in range(sent))
    assert net.dropped_lost == sent - arrived
    assert 0.23 < net.dropped_lost / sent < 0.27
    assert 0.08 < dups / sent < 0.12


def test_bandwidth_serialises_an_uplink() -> None:
    net = _net(latency="constant", latency_ms=0.0, bandwidth_bytes_per_s=1000.0)
    arrivals = [net.route(0, 1, 0.0, 100) for _ in range(3)]
    assert arrivals == pytest.approx([0.1, 0.2, 0.3])
    assert net.route(2, 1, 0.0, 100) == pytest.approx(0.1)  # another node's uplink is free


def test_partition_bridge_and_oneway() -> None:
    net = _net(nodes=5)
    net.partition([0, 0, 1, 1, BRIDGE])
    assert net.route(0, 2, 0.0, 1) < 0
    assert net.route(2, 0, 0.0, 1) < 0
    # Same side, and a bridge to or from either side, pass.
    assert [net.route(a, b, 0.0, 1) >= 0 for a, b in ((0, 1), (4, 2), (0, 4))] == [True] * 3
    net.partition([0, 0, 1, 1, 1], oneway=True)
    assert net.route(0, 2, 0.0, 1) < 0  # group 0 cannot reach group 1 ...
    assert net.route(2, 0, 0.0, 1) >= 0  # ... but hears it
    assert not net.reachable(0, 2)
    net.heal()
    assert net.reachable(0, 2)
    assert net.dropped_partition == 3


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"latency": "gaussian"}, "not a distribution"),
        ({"loss_ratio": 1.5}, r"loss_ratio = 1.5: use a ratio in \[0, 1\)"),
        ({"latency": "uniform", "latency_ms_min": 50.0, "latency_ms_max": 10.0}, "swap them"),
        ({"latency_ms": -1.0}, "latency_ms = -1.0"),
    ],
)
def test_bad_knobs_are_refused_by_name(knobs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinkConfig(**knobs)
