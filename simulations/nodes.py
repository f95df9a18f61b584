"""A simulated node as the engine hosts it: its in-memory op log and its clocks.

``SimLog`` is the ``node.gossip.api.OpLog`` a core reads (ids in a digest, bodies in the run's
shared ``id -> (body, sig)`` table, and a full ``State`` unless ``state_nodes`` left it out).
``SimNode`` is what the engine and ``simulations.faults`` know about one node: its core, HLC,
up/down/left flags, incarnation, timer, and its two clocks. The monotonic clock (the core's
``now``) is virtual time + ``clock_s`` (``CORE_CLOCK_ORIGIN_S`` + a fixed skew); the wall clock
(``wall_ms``, what its HLC and its ops' ``wall_ms`` read) adds a ``skew`` fault's step too;
``clock_s`` comes from ``clock_skew_ms_max``. ``wall_ms`` is the one place virtual time
becomes wall-clock ms.

Memory: the run shares one ``id -> (body, sig)`` table among all nodes (``SimLog`` holds the
ids, in its digest, and reads bodies from it): bytes are immutable, so this is what 1,000 logs
holding the same ops would contain, without 1,000 references per op. ``state_nodes`` limits how
many nodes also keep a full ``State`` (a seeded sample; the rest keep the digest only), for
runs where 1,000 States would not fit in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

from node.gossip.messages import WireOp
from node.ledger.digest import OpDigest
from node.ledger.hlc import HLC
from node.ledger.op import Op
from node.ledger.state import State
from simulations.cores import SimCore

__all__ = ["CORE_CLOCK_ORIGIN_S", "NETWORK_ID", "T0_MS", "SimLog", "SimNode"]

NETWORK_ID: Final = "sim"
# Virtual time 0 on the wall clock (ops' hlc wall_ms): 2025-10-09, any fixed instant would do.
T0_MS: Final = 1_760_000_000_000
# Added to every core's `now` so that clock offsets never make it negative.
CORE_CLOCK_ORIGIN_S: Final = 10_000.0


class SimLog:
    """One node's in-memory op log: the ``node.gossip.api.OpLog`` the core reads."""

    __slots__ = ("_clock_max", "born_at", "digest", "state", "wires")

    def __init__(self, wires: dict[bytes, WireOp], born_at: float, *, keep_state: bool) -> None:
        self.wires = wires
        self.born_at = born_at
        self.state = State(NETWORK_ID) if keep_state else None
        self.digest = self.state.digest if self.state is not None else OpDigest()
        # A log without a State still knows its greatest HLC: a restart's clock starts there.
        self._clock_max = (0, 0)

    def has(self, op_id: bytes) -> bool:
        return op_id in self.digest

    def get_wire(self, ids: Iterable[bytes]) -> list[WireOp]:
        digest, wires = self.digest, self.wires
        return [wires[i] for i in ids if i in digest]

    def add(self, op: Op, payload: dict[str, Any]) -> bool:
        if self.state is not None:
            return self.state.apply(op, payload)
        added = self.digest.add(op.id, op.wall_ms)
        if added and (op.wall_ms, op.logical) > self._clock_max:
            self._clock_max = (op.wall_ms, op.logical)
        return added

    def clock_max(self) -> tuple[int, int]:
        """The greatest HLC among the ops held (``State.clock_max``)."""
        return self.state.clock_max if self.state is not None else self._clock_max


class SimNode:
    __slots__ = (
        "addr",
        "busy_until",
        "clock_s",
        "core",
        "hlc",
        "incarnation",
        "index",
        "keep_state",
        "left",
        "log",
        "node_id",
        "same_instant",
        "slow_s",
        "started",
        "timer_at",
        "up",
        "up_since",
        "wall_skew_s",
    )

    def __init__(self, index: int, log: SimLog, clock_s: float, keep_state: bool) -> None:
        self.index = index
        self.node_id = f"n{index}"
        self.addr = f"sim://{self.node_id}"
        self.log = log
        self.keep_state = keep_state
        self.core: SimCore | None = None
        self.hlc = HLC()
        self.incarnation = 0
        self.up = False
        self.up_since = 0.0
        self.started = False
        self.left = False
        # Monotonic clock offset (origin + skew) and the wall clock's extra step (skew faults).
        self.clock_s = clock_s
        self.wall_skew_s = 0.0
        self.slow_s = 0.0
        self.busy_until = 0.0
        self.timer_at = math.inf
        self.same_instant = 0

    @property
    def live(self) -> bool:
        return self.up and not self.left

    def wall_ms(self, at: float) -> int:
        """This node's wall clock at virtual time ``at``, in ms: what the real node reads from
        ``time.time_ns()`` and hands its HLC (ops' ``wall_ms``). ``T0_MS`` at virtual time 0,
        plus the node's clock skew and any ``skew`` fault's step; never before the epoch."""
        return max(
            T0_MS + int((at + self.clock_s - CORE_CLOCK_ORIGIN_S + self.wall_skew_s) * 1000), 0
        )
