"""Group commit, sans I/O: which waiting writes the next durable transaction takes.

Theory of operation
-------------------
A durable write costs one fsync, and an fsync costs the same for one op as for hundreds. So
writes that arrive while a commit is under way wait, and the next commit takes all of them at
once: one transaction, one fsync, each write answered when that commit is durable. This is
the leader/follower group commit of PostgreSQL and InnoDB without their ``commit_delay``:
**there is no timer.** When the committer is free, the next write is taken at once, alone if
it is alone, so a lone writer never waits for company; batches form only from the writes that
queued behind a commit in flight, and grow with the load on their own.

``GroupCommit`` is the bookkeeping only, driven by its caller (the Trio driver in
``node/p2p/gossip_driver.py``, or a test):

* ``offer(item, ops, size_bytes)`` queues a write, or says no (``False``) when the queue is at
  its bound (``writes_queued_max`` writes or ``bytes_queued_max`` bytes): the caller waits for
  room, so memory stays bounded whatever the number of writers.
* ``take()`` gives the next batch when the committer is free and something waits, oldest
  first: every waiting write, as long as the batch stays within ``ops_per_commit_max`` ops and
  ``bytes_per_commit_max`` bytes (a single write larger than those still goes, alone: it was
  admitted by the op size limits, and refusing it here would starve it). The batch is then in
  flight and ``take()`` gives nothing until ``finished()``.
* ``finished()`` says the batch in flight is durable, or failed: the committer is free again.

Bounding a batch bounds one transaction's time (and so the latency of the writes behind it)
and the ops one gossip broadcast carries. What a failed batch means for its writes (each is
retried alone, so one write the store refuses fails alone) is the driver's business; this
object only keeps count of commits and writes so the batching can be watched
(``writes_committed / commits``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["GroupCommit", "GroupCommitLimits"]

T = TypeVar("T")


@dataclass(frozen=True)
class GroupCommitLimits:
    """The bounds of the queue and of one commit."""

    # The gateway admits at most 512 requests at once, so the queue bound only holds back a
    # caller that is not the gateway.
    writes_queued_max: int = 1024
    bytes_queued_max: int = 64 * 1024 * 1024
    # 256 one-op writes are ~0.3 MB of SQLite pages and a few ms of transaction: a batch that
    # size already makes the fsync a small part of the cost, so bigger buys nothing.
    ops_per_commit_max: int = 256
    bytes_per_commit_max: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("writes_queued_max", "bytes_queued_max", "ops_per_commit_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"GroupCommitLimits.{name} must be at least 1")
        if self.bytes_per_commit_max < 1:
            raise ValueError("GroupCommitLimits.bytes_per_commit_max must be at least 1")


@dataclass(frozen=True)
class _Waiting(Generic[T]):
    item: T
    ops: int
    size_bytes: int


class GroupCommit(Generic[T]):
    """The queue of writes waiting for a commit, and the batch in flight (if any)."""

    def __init__(self, limits: GroupCommitLimits | None = None) -> None:
        self.limits = limits or GroupCommitLimits()
        self._waiting: deque[_Waiting[T]] = deque()
        self._bytes_queued = 0
        self._in_flight: int | None = None  # writes of the batch being committed
        self.commits = 0
        self.writes_committed = 0

    @property
    def waiting(self) -> int:
        """Writes queued for a later commit."""
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a batch is being committed."""
        return self._in_flight is not None

    def offer(self, item: T, ops: int, size_bytes: int) -> bool:
        """Queue a write of ``ops`` ops and ``size_bytes`` bytes; ``False`` if the queue is full
        (nothing changes; offer it again when a batch has been taken)."""
        if ops < 0 or size_bytes < 0:
            raise ValueError(f"a write has ops >= 0 and size_bytes >= 0, got {ops}, {size_bytes}")
        limits = self.limits
        if self._waiting and (
            len(self._waiting) >= limits.writes_queued_max
            or self._bytes_queued + size_bytes > limits.bytes_queued_max
        ):
            return False  # an empty queue always takes one, however large: no starvation
        self._waiting.append(_Waiting(item, ops, size_bytes))
        self._bytes_queued += size_bytes
        return True

    def take(self) -> list[T]:
        """The next batch, oldest writes first; ``[]`` if a batch is in flight or none waits."""
        if self._in_flight is not None or not self._waiting:
            return []
        limits = self.limits
        first = self._waiting.popleft()
        batch, ops, size_bytes = [first.item], first.ops, first.size_bytes
        while self._waiting:
            nxt = self._waiting[0]
            if (
                ops + nxt.ops > limits.ops_per_commit_max
                or size_bytes + nxt.size_bytes > limits.bytes_per_commit_max
            ):
                break
            self._waiting.popleft()
            batch.append(nxt.item)
            ops += nxt.ops
            size_bytes += nxt.size_bytes
        self._bytes_queued -= size_bytes
        self._in_flight = len(batch)
        return batch

    def finished(self) -> None:
        """The batch in flight is durable or has failed: the committer is free."""
        if self._in_flight is None:
            raise RuntimeError("finished() without a batch in flight (take() first)")
        self.commits += 1
        self.writes_committed += self._in_flight
        self._in_flight = None
