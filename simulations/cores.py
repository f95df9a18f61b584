"""Gossip cores the simulator can drive, by name (``--core gossip|flood``).

A core is anything with the driver API of ``node.gossip.api`` (``SimCore`` below); a
``CoreSpec`` says how to build one and whether the driver must hand it the full roster of
nodes as seeds (a core without membership cannot find peers any other way). To add a core,
add a ``_load_*`` function and an entry in ``_LOADERS``; loading is lazy so a core that does
not import yet (work in progress) never breaks the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from node.gossip.api import OpLog
from node.gossip.config import GossipConfig
from node.gossip.messages import Effect, Packet
from node.ledger.op import Op

__all__ = ["CORE_NAMES", "CoreError", "CoreSpec", "SimCore", "default_core_name", "load_core"]


class SimCore(Protocol):
    """What the simulator calls; ``node.gossip.core.GossipCore`` and ``FloodCore`` have it."""

    @property
    def stats(self) -> Any: ...

    def start(self, now: float, seeds: Sequence[str] = ()) -> list[Effect]: ...
    def on_packet(self, now: float, packet: Packet) -> list[Effect]: ...
    def on_timer(self, now: float) -> list[Effect]: ...
    def next_wakeup(self) -> float: ...
    def broadcast(self, now: float, ops: Sequence[Op]) -> list[Effect]: ...
    def on_ops_accepted(self, now: float, ops: Sequence[Op], sender: str) -> list[Effect]: ...
    def add_seed(self, now: float, node_id: str, addr: str) -> list[Effect]: ...
    def leave(self, now: float) -> list[Effect]: ...
    def members(self) -> Mapping[str, str]: ...


# (node_id, addr, config, rng, log, incarnation) -> core
CoreFactory = Callable[[str, str, GossipConfig, random.Random, OpLog, int], SimCore]


@dataclass(frozen=True)
class CoreSpec:
    name: str
    factory: CoreFactory
    full_roster: bool
    description: str


class CoreError(ValueError):
    """A core name is unknown or the core does not import."""


def _load_gossip() -> CoreSpec:
    from node.gossip.core import GossipCore

    def make(
        node_id: str, addr: str, config: GossipConfig, rng: random.Random, log: OpLog, inc: int
    ) -> SimCore:
        return GossipCore(node_id, addr, config, rng, log, incarnation=inc)

    return CoreSpec(
        "gossip",
        make,
        full_roster=False,
        description="node.gossip.core: rendezvous tree + lazy repair + anti-entropy + SWIM (the real core)",
    )


def _load_flood() -> CoreSpec:
    from simulations.flood import FULL_ROSTER, FloodCore

    def make(
        node_id: str, addr: str, config: GossipConfig, rng: random.Random, log: OpLog, inc: int
    ) -> SimCore:
        return FloodCore(node_id, addr, config, rng, log, incarnation=inc)

    return CoreSpec(
        "flood",
        make,
        full_roster=FULL_ROSTER,
        description="simulations.flood: naive flood + digest anti-entropy, no membership (baseline)",
    )


_LOADERS: dict[str, Callable[[], CoreSpec]] = {"gossip": _load_gossip, "flood": _load_flood}
CORE_NAMES = tuple(_LOADERS)


def load_core(name: str) -> CoreSpec:
    loader = _LOADERS.get(name)
    if loader is None:
        raise CoreError(f"unknown core {name!r}; use one of {', '.join(CORE_NAMES)}")
    try:
        return loader()
    except ImportError as exc:
        raise CoreError(
            f"core {name!r} does not import ({exc}); run with --core flood until it does"
        ) from None


def default_core_name() -> tuple[str, str | None]:
    """``gossip`` if it imports, else ``flood`` and the reason gossip was skipped."""
    try:
        _load_gossip()
    except ImportError as exc:
        return "flood", f"node.gossip.core does not import yet ({exc}); using the flood stand-in"
    return "gossip", None
