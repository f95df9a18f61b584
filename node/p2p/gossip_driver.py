"""The Trio driver of the gossip core: moves packets, time and ops, nothing else.

Theory of operation
-------------------
``GossipCore`` (pure) decides; this driver performs its effects:

* ``Send(to, packet)``: encode with ``node.gossip.wire`` and hand to the peer's outbound
  queue. Each peer has one bounded queue drained by its own task, so one slow or dead peer
  never stalls the loop or the others; when a queue is full the packet is dropped and counted
  (gossip repairs loss: IHAVE, anti-entropy).
* ``Deliver(ops, sender)``: ``Replica.submit`` in a worker thread (it fsyncs), then
  ``core.on_ops_accepted`` with the ops that were valid and durable.
* ``Notify``: logged. When a member is declared dead or gone, its outbound queue is
  dropped (its sender task ends) and the transport forgets it and closes our connections to
  it, so neither holds anything for members that are not there. The core still probes dead
  members now and then; such a packet reopens a queue and the transport dials the member's
  announced address again.

Writes from local clients (the gateway's ``submit_checked``) are *group-committed*
(``node.group_commit``, pure, says which): a write waits in a bounded queue (a writer past
the bound waits to get in), and one committer task takes every write waiting, within a
batch's bounds of ops and bytes, into one ``Replica.submit_checked_groups`` call: one
transaction and one fsync for all of them, each write with its own result (an op the
admission refuses is refused alone). Each writer is answered once its batch is durable. The
committer takes the next write as soon as it is free, with no timer, so a lone write is
committed at once, alone; under load the fsync is shared instead of queued behind
(docs/decisions.md, D11 and D23). A batch whose transaction fails is rolled back whole and
each of its writes is tried again alone, so a write the store refuses fails alone, with
``CommitFailed``, and the others are stored; nothing of a failed write is applied.

The loop waits for a packet until ``core.next_wakeup()``, then calls ``on_packet`` or
``on_timer`` with ``trio.current_time()``. A packet that does not decode, or whose claimed
sender is not the authenticated peer it came from, is logged and dropped.

The transport is anything with an ``inbox`` channel of ``(sender, bytes)``, an async
``send(to, bytes)``, ``connect(multiaddr)`` and ``forget(address)`` (``node.p2p.transport``
over libp2p; an in-memory one in tests). Node ids are addresses; the transport authenticates
them.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from node.gossip import wire
from node.gossip.core import GossipCore
from node.gossip.messages import Deliver, Effect, Notify, Send
from node.group_commit import GroupCommit, GroupCommitLimits
from node.identity.keys import NodeKey
from node.ledger.admission import Checked
from node.ledger.op import Op
from node.replica import CommitFailed, Replica, SubmitResult

__all__ = ["Dialer", "GossipService", "PacketTransport", "join_through"]

log = logging.getLogger("formation.gossip")

# Packets waiting for one peer; past this the peer is too slow and we drop (gossip repairs).
PEER_QUEUE_PACKETS_MAX = 256
ARRIVALS_KEPT = 10_000
DIAL_TIMEOUT_S = 5.0


class PacketTransport(Protocol):
    inbox: trio.MemoryReceiveChannel[tuple[str, bytes]]

    async def send(self, to: str, data: bytes) -> None: ...

    async def connect(self, multiaddr: str) -> str: ...

    async def forget(self, address: str) -> bool: ...


# Membership events after which a member is not there to talk to.
GONE_EVENTS = frozenset({"dead", "left"})


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class _Write:
    """One local client's batch waiting for a group commit, and then its outcome."""

    ops: list[Checked]
    done: trio.Event = field(default_factory=trio.Event)
    result: SubmitResult | None = None
    error: Exception | None = None


class GossipService:
    """One node's gossip: the core, its replica and its transport, run by ``run``."""

    def __init__(
        self,
        core: GossipCore,
        replica: Replica,
        transport: PacketTransport,
        seeds: Sequence[str] = (),
        group_commit_limits: GroupCommitLimits | None = None,
    ) -> None:
        self.core = core
        self.replica = replica
        self.transport = transport
        self.seeds = list(seeds)
        self.limits = wire.WireLimits.from_config(core.config)
        self.dropped_packets = 0
        self.bad_packets = 0
        self._queues: dict[str, trio.MemorySendChannel[bytes]] = {}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()  # the core is not re-entrant: one caller at a time
        # (op id hex, author's wall ms, arrival wall ms) of recent ops: propagation as seen
        # here, for `status` and benchmarks. Bounded.
        self.arrivals: deque[tuple[str, int, int]] = deque(maxlen=ARRIVALS_KEPT)
        self.group_commit: GroupCommit[_Write] = GroupCommit(group_commit_limits)
        self._write_offered = trio.Event()  # wakes the committer
        self._room = trio.Event()  # wakes writers waiting for room in the queue

    @property
    def commits(self) -> int:
        """Group commits so far (``writes_committed / commits`` is the batching)."""
        return self.group_commit.commits

    @property
    def writes_committed(self) -> int:
        return self.group_commit.writes_committed

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async with self._lock:
                await self._apply(self.core.start(trio.current_time(), self.seeds))
            nursery.start_soon(self._committer)
            task_status.started(self)
            inbox = self.transport.inbox
            while True:
                item = None
                with trio.move_on_at(self._deadline()):
                    item = await inbox.receive()
                async with self._lock:
                    now = trio.current_time()
                    effects = self.core.on_timer(now) if item is None else self._on_data(now, *item)
                    await self._apply(effects)

    def _deadline(self) -> float:
        wake = self.core.next_wakeup()
        return wake if math.isfinite(wake) else trio.current_time() + 1.0

    def _on_data(self, now: float, sender: str, data: bytes) -> list[Effect]:
        try:
            packet = wire.decode(data, self.limits)
        except wire.BadPacket as exc:
            self.bad_packets += 1
            log.warning("dropped a bad packet from %s: %s", sender, exc)
            return []
        if packet.sender != sender:
            self.bad_packets += 1
            log.warning("dropped a packet from %s claiming to be from %s", sender, packet.sender)
            return []
        try:
            return self.core.on_packet(now, packet)
        except Exception:
            # The core validates peer input, so this is a bug; but a packet must never be able
            # to take the node down. Log it loudly with the packet's sender and drop it.
            self.bad_packets += 1
            log.exception("gossip core failed on a packet from %s; packet dropped", sender)
            return []

    async def add_seed(self, node: str, addr: str) -> None:
        """A peer found by dialing (bootstrap): join the fog through it."""
        async with self._lock:
            await self._apply(self.core.add_seed(trio.current_time(), node, addr))

    async def leave(self) -> None:
        """Say goodbye to the fog (membership LEFT), and give the packets a moment to go."""
        async with self._lock:
            await self._apply(self.core.leave(trio.current_time()))
        await trio.sleep(0.2)

    async def write(self, key: NodeKey, kind: str, payload: dict[str, Any]) -> Op:
        """Sign an op as ``key``, store it durably, apply it, and gossip it."""
        # Under the lock: the core reads the replica's digest, which the write changes.
        async with self._lock:
            op = await trio.to_thread.run_sync(self.replica.write, key, kind, payload, wall_ms())
            await self._apply(self.core.broadcast(trio.current_time(), [op]))
        return op

    async def submit_checked(self, ops: list[Checked]) -> SubmitResult:
        """Store durably and apply ops a local client (the gateway) verified and checked, then
        gossip the new ones. On return the accepted ops are durable. Concurrent callers share
        one commit (group commit; see the module's docstring); raises ``CommitFailed`` if the
        store could not take the write (then nothing of it was stored or applied). Needs
        ``run`` to be running."""
        write = _Write(list(ops))
        size_bytes = sum(len(op.body) + len(op.sig) for op, _ in write.ops)
        while not self.group_commit.offer(write, len(write.ops), size_bytes):
            await self._room.wait()
        self._write_offered.set()
        await write.done.wait()
        if write.error is not None:
            raise write.error
        assert write.result is not None
        return write.result

    async def _committer(self) -> None:
        """Commit the next batch as soon as the last one is durable (see ``GroupCommit``)."""
        while True:
            batch = self.group_commit.take()
            if not batch:
                await self._write_offered.wait()
                self._write_offered = trio.Event()
                continue
            # Writers that waited for room can queue behind this batch now.
            self._room.set()
            self._room = trio.Event()
            try:
                await self._commit_batch(batch)
            finally:
                self.group_commit.finished()
            for write in batch:
                write.done.set()

    async def _commit_batch(self, batch: list[_Write]) -> None:
        """Commit ``batch`` in one transaction; if it fails, each write alone (so a write the
        store refuses fails by itself). Sets each write's result or error."""
        try:
            results = await self._commit([w.ops for w in batch])
        except Exception as exc:
            if len(batch) == 1:
                log.error("a write could not be stored: %s", exc, exc_info=exc)
                batch[0].error = CommitFailed(exc)
                return
            # The transaction was rolled back whole: nothing of the batch is stored or applied.
            log.warning(
                "a group commit of %d writes failed (%s); committing each alone",
                len(batch),
                exc,
                exc_info=exc,
            )
            for write in batch:
                try:
                    write.result = (await self._commit([write.ops]))[0]
                except Exception as alone:
                    log.error("a write could not be stored: %s", alone, exc_info=alone)
                    write.error = CommitFailed(alone)
            return
        for write, result in zip(batch, results, strict=True):
            write.result = result

    async def _commit(self, groups: list[list[Checked]]) -> list[SubmitResult]:
        """One durable transaction for ``groups``, then the gossip broadcast of what is new."""
        # Under the core's lock: the core reads the digest the commit changes.
        async with self._lock:
            results = await trio.to_thread.run_sync(
                self.replica.submit_checked_groups, groups, wall_ms()
            )
            accepted = [op for result in results for op in result.accepted]
            if accepted:
                try:
                    await self._apply(self.core.broadcast(trio.current_time(), accepted))
                except Exception:
                    # Durable already: the writes succeeded; anti-entropy spreads them anyway.
                    log.exception("broadcasting %d committed ops failed", len(accepted))
        return results

    async def _apply(self, effects: list[Effect]) -> None:
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            if isinstance(effect, Send):
                self._enqueue(effect.to, wire.encode(effect.packet, self.limits))
            elif isinstance(effect, Deliver):
                result = await trio.to_thread.run_sync(self.replica.submit, effect.ops, wall_ms())
                for index, why in result.rejected:
                    log.warning("op %d from %s refused: %s", index, effect.sender, why)
                arrived_ms = wall_ms()
                self.arrivals.extend(
                    (op.id.hex(), op.wall_ms, arrived_ms) for op in result.accepted
                )
                pending += self.core.on_ops_accepted(
                    trio.current_time(), result.accepted, effect.sender
                )
            elif isinstance(effect, Notify):
                log.info("member %s is %s", effect.node, effect.event)
                if effect.event in GONE_EVENTS:
                    queue = self._queues.pop(effect.node, None)
                    if queue is not None:
                        queue.close()  # its sender drops what is left and ends
                    await self.transport.forget(effect.node)

    def _enqueue(self, to: str, data: bytes) -> None:
        queue = self._queues.get(to)
        if queue is None:
            assert self._nursery is not None
            queue, receive = trio.open_memory_channel[bytes](PEER_QUEUE_PACKETS_MAX)
            self._queues[to] = queue
            self._nursery.start_soon(self._sender, to, queue, receive)
        try:
            queue.send_nowait(data)
        except trio.WouldBlock:
            self.dropped_packets += 1

    async def _sender(
        self,
        to: str,
        queue: trio.MemorySendChannel[bytes],
        receive: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        async for data in receive:
            if self._queues.get(to) is not queue:  # the member is gone: drop the rest
                self.dropped_packets += 1 + receive.statistics().current_buffer_used
                return
            try:
                await self.transport.send(to, data)
                continue
            except Exception as exc:
                first_error = exc
            # A member we learned of by gossip and never talked to: dial the address it
            # announced (its membership claim), then try once more.
            addr = self.core.membership.addr_of(to)
            try:
                if not addr:
                    raise first_error
                with trio.fail_after(DIAL_TIMEOUT_S):
                    await self.transport.connect(addr)
                await self.transport.send(to, data)
            except Exception as exc:  # unreachable: membership will notice and stop sending
                self.dropped_packets += 1
                log.debug("send to %s failed: %s", to, exc)


BOOTSTRAP_BACKOFF_S_MIN = 1.0
BOOTSTRAP_BACKOFF_S_MAX = 60.0
BOOTSTRAP_DIAL_TIMEOUT_S = 10.0


class Dialer(Protocol):
    async def connect(self, multiaddr: str) -> str: ...


async def join_through(
    service: GossipService, dialer: Dialer, multiaddr: str, rng: random.Random
) -> None:
    """Dial a bootstrap peer until it answers, then hand it to the core as a seed.

    Retries with jittered exponential backoff (1 s doubling to 60 s), so an unreachable
    bootstrap host costs a warning now and then, never a crash, and never blocks serving.
    """
    backoff_s = BOOTSTRAP_BACKOFF_S_MIN
    while True:
        try:
            with trio.fail_after(BOOTSTRAP_DIAL_TIMEOUT_S):
                address = await dialer.connect(multiaddr)
        except Exception as exc:
            log.warning(
                "bootstrap peer %s unreachable (%s); retrying in %.0f s", multiaddr, exc, backoff_s
            )
            await trio.sleep(backoff_s * rng.uniform(0.5, 1.5))
            backoff_s = min(backoff_s * 2, BOOTSTRAP_BACKOFF_S_MAX)
            continue
        log.info("joined through %s (%s)", multiaddr, address)
        await service.add_seed(address, multiaddr)
        return
