"""A replica: the replicated state, its clock and its durable log, kept in step.

Theory of operation
-------------------
``State`` (pure) says what the ops mean; ``Store`` (SQLite) remembers them. A ``Replica`` is
the one place that moves ops between the two, with one rule: **an op is applied and
acknowledged only after it is durable.** ``submit`` verifies a batch (signature, envelope,
payload, authorization: ``decode_op`` + ``State.check_op``, once per op), appends the new ones
to the store in one fsync'd transaction, and only then merges them into the state. Which ops
are new, early or refused is ``node.ledger.admission``'s rule, the one the simulator runs too. A crash
between the two loses nothing: on restart ``open`` rebuilds the state from the newest
snapshot plus every op logged after it, and the state is a pure function of that set.

Ops from the future (an author's clock more than ``drift_ms_max`` ahead of ours) are neither
stored nor rejected for good: they are reported as ``deferred`` and the sender (a peer's
anti-entropy, a client's retry) offers them again later, when they are no longer early. This
keeps one wrong clock from dragging every replica's HLC forward.

A replica is sync and single-threaded by design; the Trio node runs it in one task (and the
store's fsync in a worker thread). ``now_ms`` is always passed in.
"""

from __future__ import annotations

import threading
from collections.abc import Container, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from node.identity.keys import NodeKey
from node.ledger.admission import (
    Checked,
    SubmitResult,
    accept,
    admit,
    own,
    restart_clock,
    verify,
)
from node.ledger.digest import OpDigest
from node.ledger.hlc import HLC
from node.ledger.op import Op, OpRejected, sign_op
from node.ledger.state import State
from node.store import Store

__all__ = ["SNAPSHOT_EVERY_OPS", "CommitFailed", "Replica", "SubmitResult"]

# A snapshot bounds restart time: replay cost is ~7 µs per op, so 50k ops ≈ 0.35 s of
# replay at most, while a snapshot of a large state costs far more than one op to write.
SNAPSHOT_EVERY_OPS: Final = 50_000


class CommitFailed(Exception):
    """A write could not be made durable (the store's transaction failed and was rolled back):
    nothing of it was stored or applied, so the client may retry it as it is."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            f"the write was not stored ({type(cause).__name__}: {cause}); nothing of it was"
            " applied, retry it"
        )
        self.cause = cause


class Replica:
    """State + HLC + store of one network on one node."""

    def __init__(self, store: Store, state: State, hlc: HLC, *, snapshot_seq: int = 0) -> None:
        self.store = store
        self.state = state
        self.hlc = hlc
        self.network = state.network
        self._snapshot_seq = snapshot_seq
        # Ops are applied in worker threads while the gateway reads the state on the event
        # loop: readers take this lock so they never see a table change size under them.
        self.lock = threading.RLock()
        self._state_digest: tuple[int, str] = (-1, "")

    @classmethod
    def open(cls, data_dir: Path, network: str, *, drift_ms_max: int | None = None) -> Replica:
        """Open the store in ``data_dir`` and rebuild the state it holds (snapshot + replay)."""
        store = Store.open(data_dir, network=network)
        try:
            state, upto = _rebuild(store, network)
        except BaseException:
            store.close()
            raise
        # Our clock must sort after everything we already hold, or a restarted node could
        # sign an op that loses to its own earlier write.
        if drift_ms_max is None:
            hlc = restart_clock(state.clock_max)
        else:
            hlc = restart_clock(state.clock_max, drift_ms_max)
        return cls(store, state, hlc, snapshot_seq=upto)

    def close(self) -> None:
        self.store.close()

    # -- the gossip core's view (node.gossip.api.OpLog) -----------------------------------------

    @property
    def digest(self) -> OpDigest:
        return self.state.digest

    def has(self, op_id: bytes) -> bool:
        return op_id in self.state.applied

    def get_wire(self, ids: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
        return [(op.body, op.sig) for op in self.store.get(ids)]

    def state_digest(self) -> str:
        """``state.state_hash()``, recomputed only after new ops: it serializes the whole state,
        and status and ``GET /node/info`` ask for it on every call."""
        with self.lock:
            count = self.state.op_count
            if self._state_digest[0] != count:
                self._state_digest = (count, self.state.state_hash())
            return self._state_digest[1]

    # -- writing -------------------------------------------------------------------------------

    def submit(self, batch: Iterable[tuple[bytes, bytes]], now_ms: int) -> SubmitResult:
        """Verify, store durably, then apply a batch of ``(body, sig)`` from outside."""
        result = SubmitResult()
        checked: list[Checked] = []
        for index, (body, sig) in enumerate(batch):
            verdict = verify(body, sig, self.network)
            if isinstance(verdict, OpRejected):
                result.rejected.append((index, verdict))
            else:
                checked.append(verdict)
        return self.submit_checked(checked, now_ms, result)

    def submit_checked(
        self,
        ops: Iterable[Checked],
        now_ms: int,
        result: SubmitResult | None = None,
    ) -> SubmitResult:
        """Store durably, then apply ops already verified (``decode_op``) and checked
        (``State.check_op``): the gateway does both itself to answer with the reason."""
        result = SubmitResult() if result is None else result
        self.submit_checked_groups([ops], now_ms, [result])
        return result

    def submit_checked_groups(
        self,
        groups: Sequence[Iterable[Checked]],
        now_ms: int,
        results: list[SubmitResult] | None = None,
    ) -> list[SubmitResult]:
        """``submit_checked`` for several independent batches in one durable transaction
        (group commit: one fsync for all of them), with one result per batch.

        Each batch is admitted as if it came alone after the ones before it: an op an
        earlier batch of the group holds counts as a duplicate, not twice as new.
        """
        results = [SubmitResult() for _ in groups] if results is None else results
        fresh_groups: list[list[Checked]] = []
        with self.lock:  # write() may advance the clock from another worker thread
            in_group: set[bytes] = set()
            held = _Either(self.state.applied, in_group)
            for ops, result in zip(groups, results, strict=True):
                fresh = admit(ops, now_ms, self.hlc, held, result)
                in_group.update(op.id for op, _ in fresh)
                fresh_groups.append(fresh)
        self._commit(fresh_groups, results)
        return results

    def sign(self, key: NodeKey, kind: str, payload: dict[str, Any], now_ms: int) -> Op:
        """Sign an op as ``key`` with this replica's clock, and nothing more: its writer
        stores it later (``submit_checked``, e.g. several in one commit)."""
        with self.lock:
            stamp = self.hlc.now(now_ms)
        return sign_op(key, self.network, stamp, kind, payload)

    def write(self, key: NodeKey, kind: str, payload: dict[str, Any], now_ms: int) -> Op:
        """Sign an op as ``key`` with this replica's clock, store it durably and apply it.

        Raises ``OpRejected`` (nothing stored) if the op is not valid.
        """
        checked = own(self.sign(key, kind, payload, now_ms))
        self._commit([[checked]], [SubmitResult()])
        return checked[0]

    def _commit(self, fresh_groups: list[list[Checked]], results: list[SubmitResult]) -> None:
        ops = [op for fresh in fresh_groups for op, _ in fresh]
        if not ops:
            return
        seqs = self.store.append(ops)  # one transaction: durable from here on
        with self.lock:
            for fresh, result in zip(fresh_groups, results, strict=True):
                accept(fresh, self.state.apply, result)
        # The newest seq is the last one just appended (seqs only grow): no query per commit.
        if seqs and seqs[-1] - self._snapshot_seq >= SNAPSHOT_EVERY_OPS:
            self.snapshot()

    def snapshot(self) -> None:
        """Write a snapshot of the state as of the last stored op."""
        seq = self.store.last_seq()
        if seq > self._snapshot_seq:
            self.store.put_snapshot(seq, self.state.snapshot())
            self._snapshot_seq = seq


def _rebuild(store: Store, network: str) -> tuple[State, int]:
    snapshot = store.latest_snapshot()
    if snapshot is None:
        state, upto = State(network), 0
    else:
        upto, blob = snapshot
        state = State.from_snapshot(blob)
        if state.network != network:
            raise ValueError(f"snapshot is of network {state.network!r}, not {network!r}")
    # Ops in our own log were verified before they were stored: no ECDSA on replay.
    for _, op in store.iter_ops(after_seq=upto):
        state.apply(op)
    return state, upto


class _Either(Container[bytes]):
    """Ids held by either container (the state's, and those admitted earlier in a group)."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: Container[bytes], b: Container[bytes]) -> None:
        self._a, self._b = a, b

    def __contains__(self, item: object) -> bool:
        return item in self._a or item in self._b
