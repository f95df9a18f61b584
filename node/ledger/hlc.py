"""Hybrid logical clock (Kulkarni et al., 2014) with injected physical time.

Theory of operation
-------------------
Every op carries ``(wall_ms, logical)``. ``wall_ms`` tracks the largest physical time any
replica has seen (so timestamps stay close to real time and are readable), and ``logical``
orders events that share a millisecond. The pair only ever grows at one replica, and a replica
that receives a timestamp moves its clock past it, so an op a replica writes after seeing
another op always sorts after it: last-writer-wins then agrees with causality.

The clock never reads time itself. The caller passes ``physical_ms`` (the real node passes
``time.time_ns() // 1_000_000``; the simulator passes virtual time; tests pass numbers).

A peer whose clock is far ahead must not drag ours into the future (and win every LWW race for
its own records): ``observe`` refuses a timestamp more than ``drift_ms_max`` ahead of our
physical time with ``ClockDriftError``. The caller holds such an op back and retries later
rather than dropping it, so replicas still converge once real time catches up.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DRIFT_MS_MAX_DEFAULT", "HLC", "ClockDriftError"]

# 60 s: NTP-synced machines are within milliseconds; a minute tolerates a badly set laptop
# while still bounding how far ahead a hostile author can date its writes.
DRIFT_MS_MAX_DEFAULT: Final = 60_000
_LOGICAL_MAX: Final = 2**32 - 1


class ClockDriftError(ValueError):
    """A remote timestamp is further ahead of local physical time than allowed."""


class HLC:
    """A hybrid logical clock. Not thread-safe; one per replica."""

    __slots__ = ("drift_ms_max", "logical", "wall_ms")

    def __init__(
        self, wall_ms: int = 0, logical: int = 0, *, drift_ms_max: int = DRIFT_MS_MAX_DEFAULT
    ) -> None:
        self.wall_ms = wall_ms
        self.logical = logical
        self.drift_ms_max = drift_ms_max

    def now(self, physical_ms: int) -> tuple[int, int]:
        """Timestamp for a local event (an op this replica signs)."""
        if physical_ms > self.wall_ms:
            self.wall_ms, self.logical = physical_ms, 0
        else:
            self._tick()
        return (self.wall_ms, self.logical)

    def observe(self, physical_ms: int, remote: tuple[int, int]) -> tuple[int, int]:
        """Merge a received timestamp; the clock afterwards is past both ``remote`` and us."""
        remote_wall, remote_logical = remote
        if remote_wall > physical_ms + self.drift_ms_max:
            raise ClockDriftError(
                f"remote clock {remote_wall} ms is {remote_wall - physical_ms} ms ahead of ours; "
                f"the limit is {self.drift_ms_max} ms (check the sender's system time)"
            )
        wall = max(self.wall_ms, remote_wall, physical_ms)
        if wall == self.wall_ms == remote_wall:
            self.logical = max(self.logical, remote_logical)
            self._tick()
        elif wall == self.wall_ms:
            self._tick()
        elif wall == remote_wall:
            self.wall_ms, self.logical = wall, remote_logical
            self._tick()
        else:
            self.wall_ms, self.logical = wall, 0
        return (self.wall_ms, self.logical)

    def _tick(self) -> None:
        if self.logical >= _LOGICAL_MAX:
            # 4 billion events inside one millisecond cannot happen honestly; move time instead
            # of overflowing a counter that peers validate.
            self.wall_ms += 1
            self.logical = 0
        else:
            self.logical += 1

    def __repr__(self) -> str:
        return f"HLC({self.wall_ms}.{self.logical})"
