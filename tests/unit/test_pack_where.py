"""Which node builds: the same answer on every node, via first, takeover after silence."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from node.pack.where import (
    BUILD_STORAGE_BYTES_MIN,
    TAKEOVER_MS,
    candidates,
    is_my_turn,
    ranking,
)

ROOMY = {"storage_available_bytes": 10 * 1024**3, "memory_available_bytes": 2 * 1024**3}
FULL = {
    "storage_available_bytes": BUILD_STORAGE_BYTES_MIN - 1,
    "memory_available_bytes": 2 * 1024**3,
}


def _node(i: int, roles: tuple[str, ...] = ("builder",), capacity: Any = ROOMY) -> dict[str, Any]:
    node: dict[str, Any] = {"node_id": f"0x{i:040x}", "roles": list(roles)}
    if capacity is not None:
        node["capacity"] = capacity
    return node


def test_candidates_are_builders_with_room_or_not_yet_measured() -> None:
    nodes = [
        _node(1),
        _node(2, roles=()),
        _node(3, capacity=FULL),
        _node(4, capacity=None),
    ]
    assert candidates(nodes) == [_node(1)["node_id"], _node(4)["node_id"]]


def test_ranking_is_the_same_whatever_order_the_nodes_come_in() -> None:
    ids = [_node(i)["node_id"] for i in range(10)]
    rng = random.Random(7)
    orders = set()
    for _ in range(20):
        shuffled = ids[:]
        rng.shuffle(shuffled)
        orders.add(ranking("ab" * 32, shuffled))
    assert len(orders) == 1
    assert sorted(next(iter(orders))) == sorted(ids)


def test_via_goes_first_only_when_it_is_a_candidate() -> None:
    ids = [_node(i)["node_id"] for i in range(5)]
    assert ranking("cd" * 32, ids, via=ids[3])[0] == ids[3]
    outsider = _node(99)["node_id"]
    assert ranking("cd" * 32, ids, via=outsider) == ranking("cd" * 32, ids)


def test_rendezvous_spreads_builds_and_moves_few_when_a_node_leaves() -> None:
    ids = [_node(i)["node_id"] for i in range(8)]
    builds = [f"{i:064x}" for i in range(2000)]
    first = {b: ranking(b, ids)[0] for b in builds}
    counts = Counter(first.values())
    assert len(counts) == 8
    assert max(counts.values()) < 2 * 2000 / 8  # no node gets twice its share
    gone = ids[0]
    after = {b: ranking(b, ids[1:])[0] for b in builds}
    moved = [b for b in builds if first[b] != after[b]]
    assert all(first[b] == gone for b in moved)  # only the leaver's builds move


def test_first_in_line_builds_at_once_the_next_after_silence() -> None:
    ids = ranking("ef" * 32, [_node(i)["node_id"] for i in range(3)])
    build = {"status": None, "created_at": 1_000, "reports": {}}
    assert is_my_turn(build, ids, ids[0], 1_000)
    assert not is_my_turn(build, ids, ids[1], 1_000 + TAKEOVER_MS - 1)
    assert is_my_turn(build, ids, ids[1], 1_000 + TAKEOVER_MS)
    assert not is_my_turn(build, ids, ids[2], 1_000 + TAKEOVER_MS)
    assert is_my_turn(build, ids, ids[2], 1_000 + 2 * TAKEOVER_MS)
    # A report from the first node is a sign of life: the clock for takeover restarts.
    building = {**build, "reports": {ids[0]: {"status": "Building", "reported_at": 50_000}}}
    assert not is_my_turn(building, ids, ids[1], 50_000 + TAKEOVER_MS - 1)
    assert is_my_turn(building, ids, ids[1], 50_000 + TAKEOVER_MS)


def test_finished_builds_and_strangers_are_nobodys_turn() -> None:
    ids = ranking("01" * 32, [_node(i)["node_id"] for i in range(3)])
    for status in ("Built", "CriticalError"):
        assert not is_my_turn({"status": status, "created_at": 0}, ids, ids[0], 10**9)
    assert not is_my_turn({"status": None, "created_at": 0}, ids, _node(50)["node_id"], 10**9)
