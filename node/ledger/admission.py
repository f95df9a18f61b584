"""The admission rule: what a replica does with an op offered to it. Pure.

Rules
-----
``node.replica.Replica`` (the real node) and ``simulations.engine`` (the simulator's nodes)
both call these functions, so the simulator drives the rule the node runs, not a copy of it.
An op offered to a replica (by a peer, a client, the gateway) ends up in exactly one place:

``rejected``
    ``verify`` refused it: ``decode_op`` (size, canonical form, network, signature) or
    ``State.check_op`` (kind, payload schema, authorization). The verdict depends on the op
    alone, so every replica reaches it with the same reason (the simulator caches it per run).
``duplicate``
    the replica already holds its id, or the same id came earlier in the batch.
``deferred``
    its author's clock is more than the HLC's ``drift_ms_max`` ahead of ours
    (``HLC.observe`` refuses it): neither stored nor refused for good; the sender offers it
    again later, when it is no longer early, so one wrong clock cannot drag ours forward.
``accepted``
    every other op. ``admit`` has let the clock observe it and returns it as *fresh*; the
    caller makes the fresh ops durable (the replica: one fsync'd transaction; the simulator:
    nothing to do) and then ``accept`` applies them, in order, and counts them accepted. An op
    is accepted only once it is applied.

An op a replica signs itself (``own``) skips the duplicate and drift tests: its clock stamped
it (``HLC.now``), past everything the replica holds, so its id is new and it is not early. It
is checked like any other op and, if valid, accepted.

A replica that restarts takes its clock from what it holds (``restart_clock``): the greatest HLC
among its ops, so it never signs an op that loses to its own earlier write; an empty log starts
the clock at zero. The clock it ran with before is gone with the process.

Nothing here reads a clock, a store or a lock: ``now_ms`` is passed in, what the replica holds
is any container of ids, and a caller with threads holds its own lock around ``admit``.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any

from node.ledger.hlc import DRIFT_MS_MAX_DEFAULT, HLC, ClockDriftError
from node.ledger.op import Op, OpRejected, decode_op
from node.ledger.state import State

__all__ = [
    "Checked",
    "SubmitResult",
    "Verdict",
    "accept",
    "admit",
    "own",
    "restart_clock",
    "verify",
]

Checked = tuple[Op, dict[str, Any]]
"""An op that passed ``verify``, with its checked payload."""
Verdict = Checked | OpRejected


@dataclass
class SubmitResult:
    """What happened to each op of a batch. Ids of stored ops are durable on return."""

    accepted: list[Op] = field(default_factory=list)
    duplicates: list[Op] = field(default_factory=list)
    deferred: list[tuple[Op, str]] = field(default_factory=list)
    rejected: list[tuple[int, OpRejected]] = field(default_factory=list)  # (index in batch, why)


def verify(body: bytes, sig: bytes, network: str) -> Verdict:
    """``decode_op`` + ``State.check_op``: the op and its payload, or why it is refused."""
    try:
        op = decode_op(body, sig, network)
        return (op, State.check_op(op))
    except OpRejected as why:
        return why


def admit(
    ops: Iterable[Checked], now_ms: int, hlc: HLC, held: Container[bytes], result: SubmitResult
) -> list[Checked]:
    """Sort verified ops into duplicates and deferred (recorded in ``result``) and the fresh
    ones (returned in batch order), letting ``hlc`` observe each fresh op's clock."""
    fresh: list[Checked] = []
    seen: set[bytes] = set()
    for op, payload in ops:
        if op.id in held or op.id in seen:
            result.duplicates.append(op)
            continue
        try:
            hlc.observe(now_ms, (op.wall_ms, op.logical))
        except ClockDriftError as why:
            result.deferred.append((op, str(why)))
            continue
        seen.add(op.id)
        fresh.append((op, payload))
    return fresh


def own(op: Op) -> Checked:
    """An op this replica signed with its own clock: checked like any other (raises
    ``OpRejected``), never a duplicate and never early."""
    return (op, State.check_op(op))


def accept(
    fresh: Iterable[Checked], apply: Callable[[Op, dict[str, Any]], object], result: SubmitResult
) -> None:
    """Apply fresh ops (already durable) in order; each counts as accepted once applied."""
    for op, payload in fresh:
        apply(op, payload)
        result.accepted.append(op)


def restart_clock(clock_max: tuple[int, int], drift_ms_max: int = DRIFT_MS_MAX_DEFAULT) -> HLC:
    """The clock of a replica (re)started on a log whose greatest HLC is ``clock_max``."""
    return HLC(clock_max[0], clock_max[1], drift_ms_max=drift_ms_max)
