"""The group-commit batcher (node/group_commit.py), driven by hand: no I/O, no clock."""

from __future__ import annotations

import random

import pytest

from node.group_commit import GroupCommit, GroupCommitLimits


def test_a_lone_write_is_taken_at_once_and_alone() -> None:
    gc: GroupCommit[str] = GroupCommit()
    assert gc.offer("a", 1, 200)
    assert gc.take() == ["a"]  # no waiting for company
    assert gc.busy
    assert gc.waiting == 0
    gc.finished()
    assert not gc.busy
    assert gc.commits == 1
    assert gc.writes_committed == 1


def test_writes_that_queue_behind_a_commit_share_the_next_one_in_order() -> None:
    gc: GroupCommit[int] = GroupCommit()
    gc.offer(0, 1, 100)
    assert gc.take() == [0]
    for i in range(1, 6):
        assert gc.offer(i, 1, 100)
    assert gc.take() == []  # the committer is busy: they wait
    gc.finished()
    assert gc.take() == [1, 2, 3, 4, 5]
    gc.finished()
    assert gc.take() == []
    assert (gc.commits, gc.writes_committed) == (2, 6)


def test_a_batch_stops_at_its_op_bound_and_the_rest_goes_next() -> None:
    gc: GroupCommit[int] = GroupCommit(GroupCommitLimits(ops_per_commit_max=5))
    for i, ops in enumerate([2, 2, 2, 1]):
        gc.offer(i, ops, 10)
    assert gc.take() == [0, 1]  # 2 + 2; a third write of 2 would make 6 > 5
    gc.finished()
    assert gc.take() == [2, 3]


def test_a_batch_stops_at_its_byte_bound() -> None:
    gc: GroupCommit[int] = GroupCommit(GroupCommitLimits(bytes_per_commit_max=1000))
    for i in range(5):
        gc.offer(i, 1, 400)
    assert gc.take() == [0, 1]
    gc.finished()
    assert gc.take() == [2, 3]
    gc.finished()
    assert gc.take() == [4]


def test_a_write_larger_than_a_batch_still_goes_alone() -> None:
    gc: GroupCommit[str] = GroupCommit(
        GroupCommitLimits(ops_per_commit_max=2, bytes_per_commit_max=100)
    )
    gc.offer("big", 3, 5000)
    gc.offer("small", 1, 10)
    assert gc.take() == ["big"]
    gc.finished()
    assert gc.take() == ["small"]


def test_a_full_queue_refuses_and_changes_nothing_until_a_batch_is_taken() -> None:
    gc: GroupCommit[int] = GroupCommit(
        GroupCommitLimits(writes_queued_max=3, bytes_queued_max=10_000)
    )
    for i in range(3):
        assert gc.offer(i, 1, 10)
    assert not gc.offer(3, 1, 10)
    assert gc.waiting == 3
    assert gc.take() == [0, 1, 2]
    assert gc.offer(3, 1, 10)  # room again while the batch is in flight


def test_the_queue_is_bounded_in_bytes_but_an_empty_one_takes_any_write() -> None:
    gc: GroupCommit[int] = GroupCommit(GroupCommitLimits(bytes_queued_max=1000))
    assert gc.offer(0, 1, 5000)  # alone: never starved
    assert not gc.offer(1, 1, 10)
    assert gc.take() == [0]
    assert gc.offer(1, 1, 600)
    assert not gc.offer(2, 1, 600)
    assert gc.offer(2, 1, 400)


def test_misuse_is_refused_with_a_clear_error() -> None:
    gc: GroupCommit[int] = GroupCommit()
    with pytest.raises(RuntimeError, match="take"):
        gc.finished()
    with pytest.raises(ValueError, match="size_bytes"):
        gc.offer(1, 1, -1)
    assert gc.waiting == 0
    with pytest.raises(ValueError, match="ops_per_commit_max"):
        GroupCommitLimits(ops_per_commit_max=0)


def test_random_schedules_keep_order_bounds_and_lose_nothing() -> None:
    rng = random.Random(23)
    limits = GroupCommitLimits(
        writes_queued_max=20, bytes_queued_max=5000, ops_per_commit_max=8, bytes_per_commit_max=900
    )
    for _ in range(200):
        gc: GroupCommit[int] = GroupCommit(limits)
        sizes: dict[int, tuple[int, int]] = {}
        offered: list[int] = []
        taken: list[int] = []
        nxt = 0
        for _step in range(rng.randrange(1, 80)):
            if rng.random() < 0.6:
                ops, size = rng.randrange(1, 4), rng.randrange(1, 400)
                if gc.offer(nxt, ops, size):
                    sizes[nxt] = (ops, size)
                    offered.append(nxt)
                    nxt += 1
            elif gc.busy:
                gc.finished()
            else:
                batch = gc.take()
                assert batch or gc.waiting == 0
                if len(batch) > 1:
                    assert sum(sizes[i][0] for i in batch) <= limits.ops_per_commit_max
                    assert sum(sizes[i][1] for i in batch) <= limits.bytes_per_commit_max
                taken += batch
            assert gc.waiting <= limits.writes_queued_max
        while gc.waiting or gc.busy:
            if gc.busy:
                gc.finished()
            taken += gc.take()
        assert taken == offered  # every write once, oldest first
        assert gc.writes_committed == len(offered)
