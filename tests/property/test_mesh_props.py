"""Mesh address claims in any order, with duplicates, give one view and no address twice."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from node.ledger.mesh import MeshView, mesh_view, node_subject
from node.ledger.op import Op
from node.ledger.state import State
from tests.helpers import NET, T0_MS, op, seeded_keys

KEYS = seeded_keys(4, seed=29)
ADDRESSES = ("10.42.0.1", "10.42.0.2", "10.42.1.1", "10.42.1.2")
# Every op a test may pick, signed once: announces, a leave, and claims at colliding
# addresses with colliding stamps (a tie goes to the smaller subject).
POOL: list[Op] = [
    *(op(k, "node.announce", {"listen_addrs": []}, wall_ms=T0_MS) for k in KEYS),
    op(KEYS[3], "node.leave", {}, wall_ms=T0_MS + 50),
    *(
        op(
            k,
            "mesh.claim",
            {"address": a, "subject": node_subject(k.address)},
            wall_ms=T0_MS + t,
        )
        for k in KEYS
        for a in ADDRESSES
        for t in (1, 2, 7)
    ),
]


def _apply(ops: list[Op]) -> State:
    state = State(NET)
    for made in ops:
        state.ingest(made.body, made.sig)
    return state


def _shape(view: MeshView) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    return tuple(sorted(view.resolution.held.items())), tuple(sorted(view.resolution.lost))


@settings(max_examples=150, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=40),
    order=st.randoms(use_true_random=False),
)
def test_any_order_and_duplicates_give_one_view_and_no_address_twice(
    picks: list[int], order: random.Random
) -> None:
    ops = [POOL[i] for i in picks]
    shuffled = list(ops) + [POOL[i] for i in picks[: len(picks) // 2]]  # duplicates too
    order.shuffle(shuffled)
    first, second = mesh_view(_apply(ops)), mesh_view(_apply(shuffled))
    assert _shape(first) == _shape(second)
    held = list(first.resolution.held.values())
    assert len(held) == len(set(held)), "an address is held twice"
    # Every claimant holds an address or has lost, never both.
    assert not set(first.resolution.held) & first.resolution.lost
    # A node that left holds nothing.
    left = {i for i in picks if i == len(KEYS)} and node_subject(KEYS[3].address)
    if left:
        assert first.address_of(left) is None
