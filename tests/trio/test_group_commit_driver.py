"""Group commit in the Trio driver: concurrent local writes share commits, each is answered only
once durable, and a failing store fails its writes, one by one where it can, applying nothing."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from node.ledger.admission import SubmitResult, own
from node.ledger.op import Op, sign_op
from node.p2p.gossip_driver import GossipService
from node.replica import CommitFailed
from tests.helpers import NET, T0_MS, seeded_keys
from tests.trio.test_gossip_driver import MemoryHub, start_nodes

USERS = seeded_keys(64, seed=2323)


def _ops(count: int, wall_ms: int = T0_MS) -> list[Op]:
    return [
        sign_op(u, NET, (wall_ms, 0), "account.create", {"name": f"u{i}"})
        for i, u in enumerate(USERS[:count])
    ]


class _Store:
    """Wraps the replica's ``Store.append``: slow (so writes queue behind a commit), records
    what is durable when each commit returns, and fails on demand."""

    def __init__(self, service: GossipService, delay_s: float = 0.02) -> None:
        self.real = service.replica.store.append
        self.delay_s = delay_s
        self.durable: set[bytes] = set()
        self.calls: list[int] = []
        self.fail: Callable[[Sequence[Op]], bool] = lambda ops: False
        self._lock = threading.Lock()
        service.replica.store.append = self.append  # type: ignore[method-assign]

    def append(self, ops: Sequence[Op]) -> list[int]:
        time.sleep(self.delay_s)  # a worker thread: the event loop goes on queueing writes
        with self._lock:
            self.calls.append(len(ops))
        if self.fail(ops):
            raise OSError(28, "No space left on device")
        seqs = self.real(ops)
        with self._lock:
            self.durable.update(op.id for op in ops)
        return seqs


async def _one_node(nursery: trio.Nursery, tmp_path: Path) -> GossipService:
    return (await start_nodes(nursery, tmp_path, MemoryHub(), 1))[0]


async def test_concurrent_writes_share_commits_and_each_answer_comes_after_its_op_is_durable(
    tmp_path: Path,
) -> None:
    ops = _ops(64)
    async with trio.open_nursery() as nursery:
        service = await _one_node(nursery, tmp_path)
        store = _Store(service)
        answered_durable: list[bool] = []

        async def write(made: Op) -> None:
            result = await service.submit_checked([own(made)])
            assert result.accepted == [made]
            answered_durable.append(made.id in store.durable)  # checked at the moment of the answer

        with trio.fail_after(20):
            async with trio.open_nursery() as writers:
                for made in ops:
                    writers.start_soon(write, made)
        assert answered_durable == [True] * len(ops)
        assert service.writes_committed == len(ops)
        assert service.commits == len(store.calls) < len(ops) // 4  # batched, not one per write
        assert max(store.calls) > 1
        assert all(service.replica.has(made.id) for made in ops)
        nursery.cancel_scope.cancel()
    service.replica.close()


async def test_a_lone_write_is_committed_alone_without_waiting(tmp_path: Path) -> None:
    ops = _ops(3)
    async with trio.open_nursery() as nursery:
        service = await _one_node(nursery, tmp_path)
        store = _Store(service, delay_s=0.0)
        with trio.fail_after(10):
            for made in ops:  # one after another: no company to wait for
                started = trio.current_time()
                await service.submit_checked([own(made)])
                assert trio.current_time() - started < 1.0
        assert store.calls == [1, 1, 1]
        nursery.cancel_scope.cancel()
    service.replica.close()


async def test_a_write_the_store_refuses_fails_alone_and_its_batch_is_stored(
    tmp_path: Path,
) -> None:
    ops = _ops(12)
    poison = ops[7].id
    outcomes: dict[int, SubmitResult | Exception] = {}
    async with trio.open_nursery() as nursery:
        service = await _one_node(nursery, tmp_path)
        store = _Store(service)
        store.fail = lambda batch: any(op.id == poison for op in batch)

        async def write(index: int, made: Op) -> None:
            try:
                outcomes[index] = await service.submit_checked([own(made)])
            except CommitFailed as exc:
                outcomes[index] = exc

        with trio.fail_after(20):
            async with trio.open_nursery() as writers:
                for index, made in enumerate(ops):
                    writers.start_soon(write, index, made)
        failed = outcomes.pop(7)
        assert isinstance(failed, CommitFailed)
        assert "No space left on device" in str(failed)
        assert "nothing of it was applied" in str(failed)
        assert all(isinstance(r, SubmitResult) and len(r.accepted) == 1 for r in outcomes.values())
        # The poisoned write was in a batch with others (it failed, then each went alone).
        assert any(n > 1 for n in store.calls)
        assert not service.replica.has(poison)
        assert not service.replica.store.has(poison)
        assert all(service.replica.store.has(made.id) for i, made in enumerate(ops) if i != 7)
        nursery.cancel_scope.cancel()
    service.replica.close()


async def test_a_failing_store_fails_every_write_with_a_clear_error_and_applies_nothing(
    tmp_path: Path,
) -> None:
    ops = _ops(10)
    errors: list[Exception] = []
    async with trio.open_nursery() as nursery:
        service = await _one_node(nursery, tmp_path)
        store = _Store(service)
        store.fail = lambda batch: True
        before = (service.replica.state.op_count, service.replica.store.op_count())

        async def write(made: Op) -> None:
            with pytest.raises(CommitFailed, match="No space left on device") as caught:
                await service.submit_checked([own(made)])
            errors.append(caught.value)

        with trio.fail_after(20):
            async with trio.open_nursery() as writers:
                for made in ops:
                    writers.start_soon(write, made)
            assert len(errors) == len(ops)
            assert (service.replica.state.op_count, service.replica.store.op_count()) == before
            # The committer survived: once the disk has room, writes go through.
            store.fail = lambda batch: False
            result = await service.submit_checked([own(ops[0])])
            assert result.accepted == [ops[0]]
        nursery.cancel_scope.cancel()
    service.replica.close()


async def test_an_op_the_admission_refuses_is_refused_alone_in_its_batch(tmp_path: Path) -> None:
    ops = _ops(8)
    early = sign_op(USERS[63], NET, (int(time.time() * 1000) + 600_000, 0), "account.create", {})
    results: dict[int, SubmitResult] = {}
    async with trio.open_nursery() as nursery:
        service = await _one_node(nursery, tmp_path)
        store = _Store(service)
        batch = [*ops[:4], early, *ops[4:]]

        async def write(index: int, made: Op) -> None:
            results[index] = await service.submit_checked([own(made)])

        with trio.fail_after(20):
            async with trio.open_nursery() as writers:
                for index, made in enumerate(batch):
                    writers.start_soon(write, index, made)
        assert [len(results[i].accepted) for i in range(len(batch))] == [1] * 4 + [0] + [1] * 4
        assert results[4].deferred
        assert not service.replica.has(early.id)
        assert any(n > 1 for n in store.calls)
        nursery.cancel_scope.cancel()
    service.replica.close()


async def test_writers_past_a_full_queue_wait_for_room_and_all_get_in(tmp_path: Path) -> None:
    from node.gossip.config import GossipConfig
    from node.gossip.core import GossipCore
    from node.group_commit import GroupCommitLimits
    from node.replica import Replica
    from tests.trio.test_gossip_driver import KEYS

    ops = _ops(24)
    limits = GroupCommitLimits(writes_queued_max=3, ops_per_commit_max=2)
    replica = Replica.open(tmp_path / "n0", NET)
    key = KEYS[0]
    core = GossipCore(key.address, key.address, GossipConfig.local(), random.Random(0), replica)
    service = GossipService(core, replica, MemoryHub().transport(key.address), [], limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        store = _Store(service, delay_s=0.01)
        waiting_max: list[int] = []
        refused: list[int] = []
        offer = service.group_commit.offer

        def counted(item: Any, n_ops: int, size_bytes: int) -> bool:
            taken = offer(item, n_ops, size_bytes)
            if not taken:
                refused.append(n_ops)
            return taken

        service.group_commit.offer = counted  # type: ignore[method-assign]

        async def write(made: Op) -> None:
            waiting_max.append(service.group_commit.waiting)
            await service.submit_checked([own(made)])

        with trio.fail_after(20):
            async with trio.open_nursery() as writers:
                for made in ops:
                    writers.start_soon(write, made)
        assert all(replica.has(made.id) for made in ops)
        assert refused  # writers did find the queue full, waited, and got in
        assert max(waiting_max) <= 3  # the queue never held more than its bound
        assert max(store.calls) <= 2  # nor a commit more ops than its bound
        assert service.writes_committed == len(ops)
        nursery.cancel_scope.cancel()
    replica.close()
