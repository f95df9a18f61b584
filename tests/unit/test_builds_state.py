"""Builds in the replicated state: content-derived ids, node reports, which report counts."""

import itertools

import pytest

from node.ledger.builds import build_digest
from node.ledger.op import OpRejected
from node.ledger.state import State
from tests.helpers import NET, T0_MS, op, seeded_keys

ALICE, BOB, NODE_A, NODE_B = seeded_keys(4, seed=11)
FORMFILE = "NAME web\nUSER username:app passwd:$6$rounds=4096$salt$hash\n"
CONTEXT = "ab" * 32


def _request(key=ALICE, formfile=FORMFILE, context=CONTEXT, **extra):  # type: ignore[no-untyped-def]
    return op(key, "build.request", {"name": "web", "formfile": formfile, "context": context, **extra})


def _announce(node):  # type: ignore[no-untyped-def]
    return op(node, "node.announce", {"version": "test"})


def _status(node, build_id, status, wall_ms, **extra):  # type: ignore[no-untyped-def]
    return op(node, "build.status", {"build_id": build_id, "status": status, **extra}, wall_ms)


def _ingest(state: State, *ops: object) -> None:
    for made in ops:
        state.ingest(made.body, made.sig)  # type: ignore[attr-defined]


def test_the_build_id_is_the_digest_of_owner_context_and_formfile() -> None:
    state = State(NET)
    _ingest(state, _request())
    build_id = build_digest(ALICE.address, FORMFILE, CONTEXT)
    build = state.build(build_id)
    assert build is not None
    assert (build["owner"], build["name"], build["context"]) == (ALICE.address, "web", CONTEXT)
    assert build["status"] is None, "nothing builds until a node says so"
    assert build["created_at"] == T0_MS
    # Another owner, another context, another Formfile: three other ids.
    others = {
        build_digest(BOB.address, FORMFILE, CONTEXT),
        build_digest(ALICE.address, FORMFILE, "cd" * 32),
        build_digest(ALICE.address, FORMFILE + "EXPOSE 80\n", CONTEXT),
    }
    assert build_id not in others
    assert len(others) == 3
    assert [b["build_id"] for b in state.builds(ALICE.address)] == [build_id]
    assert state.builds(BOB.address) == []


def test_a_request_naming_another_id_is_refused_and_changes_nothing() -> None:
    state = State(NET)
    before = state.state_hash()
    wrong = build_digest(BOB.address, FORMFILE, CONTEXT)
    with pytest.raises(OpRejected) as info:
        _ingest(state, _request(build_id=wrong))
    assert info.value.code == "unauthorized"
    assert "is not the digest" in str(info.value)
    assert state.state_hash() == before


def test_only_announced_nodes_reports_count_and_built_wins() -> None:
    state = State(NET)
    build_id = build_digest(ALICE.address, FORMFILE, CONTEXT)
    image = "ee" * 32
    _ingest(
        state,
        _request(),
        _announce(NODE_A),
        _status(NODE_A, build_id, "Building", T0_MS + 1, step=2, steps=5),
        # An account, not a node, claims to have built it: ignored when reading.
        _status(BOB, build_id, "Built", T0_MS + 2, image="00" * 32),
    )
    build = state.build(build_id)
    assert build is not None
    assert (build["status"], build["node_id"], build["step"]) == ("Building", NODE_A.address, 2)
    _ingest(state, _status(NODE_A, build_id, "Built", T0_MS + 3, image=image, steps=5))
    _ingest(state, _announce(NODE_B), _status(NODE_B, build_id, "Building", T0_MS + 9, step=1))
    build = state.build(build_id)
    assert build is not None
    assert (build["status"], build["node_id"], build["image"]) == ("Built", NODE_A.address, image)


def test_build_ops_commute() -> None:
    build_id = build_digest(ALICE.address, FORMFILE, CONTEXT)
    ops = [
        _request(),
        _announce(NODE_A),
        _announce(NODE_B),
        _status(NODE_A, build_id, "Building", T0_MS + 1, step=1),
        _status(NODE_A, build_id, "CriticalError", T0_MS + 2, line=3, error="apt failed"),
        _status(NODE_B, build_id, "Building", T0_MS + 3, step=4),
    ]
    hashes = set()
    views = []
    for order in itertools.islice(itertools.permutations(ops), 0, None, 37):
        state = State(NET)
        _ingest(state, *order)
        hashes.add(state.state_hash())
        views.append(state.build(build_id))
    assert len(hashes) == 1
    assert all(v == views[0] for v in views)
    assert views[0] is not None
    assert views[0]["node_id"] == NODE_B.address  # the latest report
