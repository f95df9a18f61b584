"""The simulated network: per-packet latency, loss, duplication, bandwidth and partitions.

Theory of operation
-------------------
``Network.route(src, dst, now, size_bytes)`` decides the fate of one packet: the virtual time
it arrives, or ``-1.0`` if it is dropped (by a partition or by random loss). It draws from
the one network RNG it is given, in the order the engine sends packets, so a run is a pure
function of the seed.

Latency is ``base + jitter``: ``base`` comes from the configured distribution, drawn per
packet, or once per directed link when ``latency_per_link`` (fixed distances, as between
sites), and ``jitter`` is uniform in ``[0, jitter_ms_max]``. Whenever latency varies, packets
on one link overtake each other: that is the reordering model. With ``bandwidth_bytes_per_s``
each node's uplink is a FIFO: a packet leaves when the ones before it have been serialised.

A partition assigns every node a group; a packet between different groups is dropped unless an
end is a *bridge* (group ``BRIDGE``: it sees every side). ``oneway`` drops only packets from a
lower-numbered group to a higher one (A cannot reach B, B still reaches A). The engine toggles
``active`` to make a partition flap. Node crashes and slow nodes are the engine's business:
the network only moves packets.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace
from typing import Any, Final

__all__ = ["BRIDGE", "LATENCY_KINDS", "LinkConfig", "Network"]

LATENCY_KINDS: Final = ("constant", "uniform", "lognormal", "pareto")
BRIDGE: Final = -1


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Knobs of every link (units last, TigerBeetle style). See the module docstring."""

    latency: str = "constant"
    # constant: every packet takes latency_ms.
    latency_ms: float = 50.0
    # uniform: between min and max; pareto: min is the scale; lognormal/pareto: max caps the tail.
    latency_ms_min: float = 0.0
    latency_ms_max: float = 0.0
    # lognormal: the median and the shape (sigma of the underlying normal).
    latency_ms_median: float = 50.0
    latency_sigma: float = 0.5
    # pareto: tail index (smaller = heavier tail; must be > 1 for a finite mean).
    latency_pareto_alpha: float = 2.0
    latency_per_link: bool = False
    jitter_ms_max: float = 0.0
    loss_ratio: float = 0.0
    duplicate_ratio: float = 0.0
    # Per-node uplink; 0 means unlimited.
    bandwidth_bytes_per_s: float = 0.0

    def __post_init__(self) -> None:
        if self.latency not in LATENCY_KINDS:
            raise ValueError(
                f"network.latency = {self.latency!r} is not a distribution; use one of "
                f"{', '.join(LATENCY_KINDS)}"
            )
        for name in (
            "latency_ms",
            "latency_ms_min",
            "latency_ms_max",
            "latency_ms_median",
            "jitter_ms_max",
            "bandwidth_bytes_per_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"network.{name} = {value!r}: use a finite number >= 0")
        for name in ("loss_ratio", "duplicate_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < 1):
                raise ValueError(f"network.{name} = {value!r}: use a ratio in [0, 1)")
        if self.latency == "uniform" and self.latency_ms_max < self.latency_ms_min:
            raise ValueError(
                f"network.latency_ms_max ({self.latency_ms_max}) is below latency_ms_min "
                f"({self.latency_ms_min}): swap them"
            )
        if self.latency == "lognormal" and not (
            self.latency_ms_median > 0 and self.latency_sigma > 0
        ):
            raise ValueError("lognormal latency needs latency_ms_median > 0 and latency_sigma > 0")
        if self.latency == "pareto" and not (
            self.latency_ms_min > 0 and self.latency_pareto_alpha > 0
        ):
            raise ValueError(
                "pareto latency needs latency_ms_min > 0 (the scale) and latency_pareto_alpha > 0"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "network") -> LinkConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"[{where}] has unknown knob(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def updated(self, data: dict[str, Any], where: str) -> LinkConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{where} has unknown knob(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return replace(self, **data)

    def describe(self) -> str:
        if self.latency == "constant":
            text = f"{self.latency_ms:g} ms"
        elif self.latency == "uniform":
            text = f"uniform {self.latency_ms_min:g}-{self.latency_ms_max:g} ms"
        elif self.latency == "lognormal":
            text = f"lognormal median {self.latency_ms_median:g} ms sigma {self.latency_sigma:g}"
        else:
            text = f"pareto min {self.latency_ms_min:g} ms alpha {self.latency_pareto_alpha:g}"
        if self.jitter_ms_max:
            text += f" + jitter {self.jitter_ms_max:g} ms"
        if self.loss_ratio:
            text += f", {self.loss_ratio:.1%} loss"
        if self.duplicate_ratio:
            text += f", {self.duplicate_ratio:.1%} duplicated"
        return text


class Network:
    """Packet fates for ``nodes`` endpoints (indices; grows with ``add_node``)."""

    __slots__ = (
        "_links",
        "_uplink_free_at",
        "active",
        "changed_at",
        "config",
        "dropped_lost",
        "dropped_partition",
        "duplicated",
        "group",
        "oneway",
        "rng",
    )

    def __init__(self, config: LinkConfig, rng: random.Random, nodes: int) -> None:
        self.config = config
        self.rng = rng
        self.group = [0] * nodes
        self.active = False
        self.oneway = False
        # Virtual time of the last partition change (set by the engine): failure detectors
        # get a grace period after it.
        self.changed_at = 0.0
        self._links: dict[tuple[int, int], float] = {}
        self._uplink_free_at = [0.0] * nodes
        self.dropped_lost = 0
        self.dropped_partition = 0
        self.duplicated = 0

    def add_node(self, group: int = 0) -> None:
        self.group.append(group)
        self._uplink_free_at.append(0.0)

    def reconfigure(self, config: LinkConfig) -> None:
        self.config = config
        self._links.clear()

    # -- partitions ------------------------------------------------------------------------------

    def partition(self, groups: list[int], *, oneway: bool = False) -> None:
        """Give node i group ``groups[i]`` (``BRIDGE`` = sees every group) and cut the links."""
        self.group = list(groups)
        self.oneway = oneway
        self.active = True

    def heal(self) -> None:
        self.group = [0] * len(self.group)
        self.active = False
        self.oneway = False

    def blocked(self, src: int, dst: int) -> bool:
        if not self.active:
            return False
        a, b = self.group[src], self.group[dst]
        if a == b or BRIDGE in (a, b):
            return False
        return a < b if self.oneway else True

    def reachable(self, a: int, b: int) -> bool:
        """Both directions pass (what a failure detector needs to see ``b`` alive)."""
        return not (self.blocked(a, b) or self.blocked(b, a))

    # -- packets ---------------------------------------------------------------------------------

    def _latency_s(self) -> float:
        c = self.config
        kind = c.latency
        if kind == "constant":
            ms = c.latency_ms
        elif kind == "uniform":
            ms = self.rng.uniform(c.latency_ms_min, c.latency_ms_max)
        elif kind == "lognormal":
            ms = c.latency_ms_median * math.exp(self.rng.gauss(0.0, c.latency_sigma))
        else:
            ms = c.latency_ms_min * self.rng.paretovariate(c.latency_pareto_alpha)
        if kind in ("lognormal", "pareto") and c.latency_ms_max > 0:
            ms = min(ms, c.latency_ms_max)
        return ms / 1000.0

    def route(self, src: int, dst: int, now: float, size_bytes: int) -> float:
        """Arrival time of a packet sent at ``now``, or -1.0 if it is lost."""
        if self.active and self.blocked(src, dst):
            self.dropped_partition += 1
            return -1.0
        c = self.config
        if c.loss_ratio and self.rng.random() < c.loss_ratio:
            self.dropped_lost += 1
            return -1.0
        depart = now
        if c.bandwidth_bytes_per_s:
            depart = max(now, self._uplink_free_at[src]) + size_bytes / c.bandwidth_bytes_per_s
            self._uplink_free_at[src] = depart
        if c.latency_per_link:
            key = (src, dst)
            base = self._links.get(key)
            if base is None:
                base = self._links[key] = self._latency_s()
        elif c.latency == "constant":
            base = c.latency_ms / 1000.0
        else:
            base = self._latency_s()
        if c.jitter_ms_max:
            base += self.rng.uniform(0.0, c.jitter_ms_max) / 1000.0
        return depart + base

    def duplicate(self, src: int, dst: int, now: float) -> float:
        """Arrival time of a duplicate of the packet just routed, or -1.0 for none."""
        c = self.config
        if not c.duplicate_ratio or self.rng.random() >= c.duplicate_ratio:
            return -1.0
        self.duplicated += 1
        base = self._links.get((src, dst)) if c.latency_per_link else None
        if base is None:
            base = self._latency_s()
        return now + base + self.rng.uniform(0.0, max(c.jitter_ms_max, 1.0)) / 1000.0
