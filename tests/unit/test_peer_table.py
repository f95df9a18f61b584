"""The transport's peer table: bounded, least recently active evicted first."""

from __future__ import annotations

import random

import pytest

from node.p2p.peer_table import PeerTable


def test_a_full_table_evicts_the_least_recently_active_peer() -> None:
    table = PeerTable[int](2)
    assert table.touch("a", 1) is None
    assert table.touch("b", 2) is None
    assert table.touch("c", 3) == ("a", 1)
    assert table.addresses() == ["b", "c"]
    assert "a" not in table
    assert table.get("a") is None


def test_activity_protects_a_peer_from_eviction() -> None:
    table = PeerTable[int](2)
    table.touch("a", 1)
    table.touch("b", 2)
    table.refresh("a")  # a frame from a: b is now the least recently active
    assert table.touch("c", 3) == ("b", 2)
    table.touch("a", 10)  # touching a known peer updates it and never evicts
    assert table.addresses() == ["c", "a"]
    assert table.get("a") == 10


def test_refresh_never_adds_and_forget_frees_a_slot() -> None:
    table = PeerTable[int](1)
    table.refresh("ghost")
    assert len(table) == 0
    table.touch("a", 1)
    assert table.forget("a") == 1
    assert table.forget("a") is None
    assert table.touch("b", 2) is None


def test_the_table_never_exceeds_peers_max_and_keeps_the_most_recent() -> None:
    rng = random.Random(5)
    table = PeerTable[int](8)
    recent: list[str] = []  # a reference model: most recent last
    for step in range(2000):
        address = f"p{rng.randrange(20)}"
        if rng.random() < 0.2:
            table.forget(address)
            if address in recent:
                recent.remove(address)
        else:
            table.touch(address, step)
            if address in recent:
                recent.remove(address)
            recent.append(address)
            del recent[:-8]
        assert table.addresses() == recent
        assert len(table) <= 8


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3"])
def test_peers_max_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="peers_max"):
        PeerTable(bad)  # type: ignore[arg-type]
