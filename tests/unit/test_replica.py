"""Replica: ops are applied only once durable, and a restart rebuilds identical state."""

from pathlib import Path

import pytest

from node.ledger.admission import SubmitResult, accept, admit, own, verify
from node.ledger.hlc import HLC
from node.ledger.op import Op, OpRejected
from node.ledger.state import State
from node.replica import Replica
from node.store import WrongNetwork
from tests.helpers import NET, T0_MS, op, seeded_keys

ALICE, BOB = seeded_keys(2)


def test_submit_stores_then_applies_and_reports_each_op(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path, NET)
    good = op(ALICE, "account.create", {"name": "alice"})
    forged = op(BOB, "account.update", {"address": ALICE.address, "name": "x"})
    early = op(BOB, "account.create", {}, wall_ms=T0_MS + 10 * 60_000)
    result = replica.submit(
        [
            (good.body, good.sig),
            (forged.body, forged.sig),
            (b"junk", b"x" * 65),
            (early.body, early.sig),
            (good.body, good.sig),
        ],
        now_ms=T0_MS,
    )
    assert [o.id for o in result.accepted] == [good.id]
    assert [o.id for o in result.duplicates] == [good.id]
    assert [(i, e.code) for i, e in result.rejected] == [(1, "unauthorized"), (2, "malformed")]
    assert [o.id for o, _ in result.deferred] == [early.id]
    assert replica.store.op_count() == 1
    assert replica.store.has(good.id)
    # The deferred op is accepted once it is no longer from the future.
    later = replica.submit([(early.body, early.sig)], now_ms=T0_MS + 10 * 60_000)
    assert [o.id for o in later.accepted] == [early.id]
    replica.close()


def test_restart_rebuilds_identical_state_with_and_without_a_snapshot(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path, NET)
    for i in range(30):
        replica.write(
            ALICE, "instance.create", {"name": f"vm{i % 4}", "formfile": f"v{i}"}, T0_MS + i
        )
        if i == 14:
            replica.snapshot()
    replica.write(BOB, "agent.register", {"name": "bot", "description": "d"}, T0_MS + 100)
    expected, clock = replica.state.state_hash(), (replica.hlc.wall_ms, replica.hlc.logical)
    replica.close()

    reopened = Replica.open(tmp_path, NET)
    assert reopened.state.state_hash() == expected
    assert reopened.state.op_count == 31
    assert (reopened.hlc.wall_ms, reopened.hlc.logical) == clock
    # A write after restart sorts after everything written before it, even with a stale clock.
    after = reopened.write(ALICE, "instance.update", {"name": "vm0", "description": "late"}, T0_MS)
    assert (after.wall_ms, after.logical) > clock
    reopened.close()


def test_write_refuses_an_invalid_op_and_stores_nothing(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path, NET)
    with pytest.raises(OpRejected) as info:
        replica.write(ALICE, "account.create", {"is_global_admin": True}, T0_MS)
    assert info.value.code == "invalid_payload"
    assert replica.store.op_count() == 0
    assert replica.state.op_count == 0
    replica.close()


def test_a_store_of_another_network_is_refused(tmp_path: Path) -> None:
    Replica.open(tmp_path, NET).close()
    with pytest.raises(WrongNetwork):
        Replica.open(tmp_path, "devnet")


def test_the_state_digest_follows_every_new_op(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path, NET)
    empty = replica.state_digest()
    assert empty == replica.state.state_hash()
    first = op(ALICE, "account.create", {"name": "alice"})
    replica.submit([(first.body, first.sig)], now_ms=T0_MS)
    assert replica.state_digest() == replica.state.state_hash() != empty
    second = op(ALICE, "account.update", {"name": "al"}, wall_ms=T0_MS + 1)
    replica.submit([(second.body, second.sig)], now_ms=T0_MS + 1)
    assert replica.state_digest() == replica.state.state_hash()
    replica.close()


def test_the_admission_rule_sorts_a_batch_into_duplicates_deferred_and_fresh() -> None:
    # The rule node.replica and the simulator both run (node.ledger.admission).
    held, new = op(ALICE, "account.create", {"name": "a"}), op(BOB, "account.create", {})
    early = op(BOB, "account.update", {"name": "b"}, wall_ms=T0_MS + 10 * 60_000)
    hlc, result = HLC(), SubmitResult()
    batch = [own(held), own(new), own(early), own(new)]
    fresh = admit(batch, T0_MS, hlc, {held.id}, result)
    assert [o.id for o, _ in fresh] == [new.id]
    assert [o.id for o in result.duplicates] == [held.id, new.id]
    assert [o.id for o, _ in result.deferred] == [early.id]
    assert "ahead of ours" in result.deferred[0][1]
    assert (hlc.wall_ms, hlc.logical) == (T0_MS, 1)  # observed the fresh op only
    assert result.accepted == []  # accepted means applied
    state = State(NET)
    accept(fresh, state.apply, result)
    assert [o.id for o in result.accepted] == [new.id]
    assert new.id in state.applied


def test_verify_returns_the_refusal_and_own_raises_it() -> None:
    forged = op(BOB, "account.update", {"address": ALICE.address, "name": "x"})
    verdict = verify(forged.body, forged.sig, NET)
    assert isinstance(verdict, OpRejected)
    assert verdict.code == "unauthorized"
    with pytest.raises(OpRejected):
        own(forged)
    good = op(ALICE, "account.create", {"name": "alice"})
    checked = verify(good.body, good.sig, NET)
    assert not isinstance(checked, OpRejected)
    assert isinstance(checked[0], Op)
    assert checked[0].id == good.id
    assert isinstance(verify(good.body, good.sig, "othernet"), OpRejected)


def test_a_group_commit_answers_each_batch_as_if_it_came_alone(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path, NET)
    a = op(ALICE, "account.create", {"name": "alice"})
    b = op(BOB, "account.create", {"name": "bob"})
    early = op(BOB, "account.update", {"name": "later"}, wall_ms=T0_MS + 10 * 60_000)
    groups = [[own(a)], [own(b), own(a)], [own(early)], []]
    seq_before = replica.store.last_seq()
    results = replica.submit_checked_groups(groups, now_ms=T0_MS)
    assert [[o.id for o in r.accepted] for r in results] == [[a.id], [b.id], [], []]
    # The same op in a later batch of the group is a duplicate there, not a second new op.
    assert [[o.id for o in r.duplicates] for r in results] == [[], [a.id], [], []]
    assert [[o.id for o, _ in r.deferred] for r in results] == [[], [], [early.id], []]
    # One transaction for the whole group: two ops stored, both applied.
    assert replica.store.last_seq() == seq_before + 2
    assert replica.state.account(ALICE.address) is not None
    assert replica.state.account(BOB.address) is not None
    # The same group again: everything is a duplicate, nothing is stored.
    again = replica.submit_checked_groups([[own(a)], [own(b)]], now_ms=T0_MS)
    assert [len(r.accepted) for r in again] == [0, 0]
    assert [len(r.duplicates) for r in again] == [1, 1]
    assert replica.store.last_seq() == seq_before + 2
    replica.close()


def test_a_snapshot_is_written_every_snapshot_every_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.replica

    monkeypatch.setattr(node.replica, "SNAPSHOT_EVERY_OPS", 5)
    replica = Replica.open(tmp_path / "node", NET)
    users = seeded_keys(12, seed=2323)
    made = [op(u, "account.create", {"name": f"u{i}"}) for i, u in enumerate(users)]
    latest = []
    for start in range(0, 12, 3):  # commits of 3 ops, ending at seqs 3, 6, 9, 12
        replica.submit_checked_groups([[own(m)] for m in made[start : start + 3]], T0_MS)
        snapshot = replica.store.latest_snapshot()
        latest.append(None if snapshot is None else snapshot[0])
    # A snapshot once 5 ops are logged past the last one: at 6, then at 12.
    assert latest == [None, 6, 6, 12]
    replica.close()
