"""Lifeguard's suspicion timeout as pure functions (no clock, no state).

Theory of operation
-------------------
A SWIM suspect is declared dead when its suspicion timer runs out. Lifeguard (LHA-suspicion)
starts the timer long, at ``max_s``, and shrinks it towards ``min_s`` as *independent*
confirmations arrive: other members whose own probes failed and who said so. The shrink is
log-scaled, ``timeout = max_s - log(c + 1) / log(k + 1) x (max_s - min_s)`` for ``c`` of the
``k`` confirmations expected, so the first confirmations matter most and ``c = k`` reaches
``min_s`` (memberlist's ``remainingSuspicionTime``). The bounds scale with the cluster:
``min_s = suspicion_mult x max(1, log10 N) x probe_interval_s``, ``max_s = suspicion_max_mult x
min_s``, and ``k = suspicion_mult - 2`` confirmations are expected unless the cluster is too
small to supply them (``N - 2 < k``: then none, and the timer is ``min_s`` from the start).

The timer is measured from when *this* member started suspecting, so each member decides on
its own clock; the membership core (``membership.py``) keeps the state and calls these.
"""

from __future__ import annotations

import math

from node.gossip.config import GossipConfig

__all__ = [
    "suspicion_confirmations",
    "suspicion_deadline",
    "suspicion_timeout_s",
    "suspicion_timeouts",
]


def suspicion_timeouts(config: GossipConfig, n: int) -> tuple[float, float]:
    """``(min_s, max_s)`` of a suspicion timer in a cluster of ``n`` live members."""
    min_s = config.suspicion_mult * max(1.0, math.log10(max(1, n))) * config.probe_interval_s
    return min_s, max(min_s, config.suspicion_max_mult * min_s)


def suspicion_confirmations(config: GossipConfig, n: int) -> int:
    """Independent confirmations that shrink a suspicion timer all the way to ``min_s``.

    None in clusters too small to supply them (memberlist's rule).
    """
    k = int(config.suspicion_mult) - 2
    return 0 if n - 2 < k else max(0, k)


def suspicion_timeout_s(confirmations: int, expected: int, min_s: float, max_s: float) -> float:
    """Total suspicion time after ``confirmations`` of ``expected`` independent confirmations.

    ``max_s`` with none, ``min_s`` with all of them (or when none are expected); never below
    ``min_s``. Counts beyond ``expected`` change nothing. Bad arguments raise ``ValueError``.
    """
    if confirmations < 0 or expected < 0:
        raise ValueError(
            f"confirmations and expected must be >= 0, got {confirmations} and {expected}"
        )
    if not 0 <= min_s <= max_s:
        raise ValueError(f"need 0 <= min_s <= max_s, got min_s={min_s} and max_s={max_s}")
    if expected == 0:
        return min_s
    fraction = math.log(min(confirmations, expected) + 1) / math.log(expected + 1)
    return max(min_s, max_s - fraction * (max_s - min_s))


def suspicion_deadline(
    start_s: float, min_s: float, max_s: float, expected: int, confirmations: int
) -> float:
    """When a suspicion that started at ``start_s`` runs out (``suspicion_timeout_s`` later)."""
    return start_s + suspicion_timeout_s(confirmations, expected, min_s, max_s)
