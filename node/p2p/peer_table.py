"""The transport's table of known peers: bounded, least recently active evicted first.

Theory of operation
-------------------
Pure and sync (no libp2p, no clock, no I/O), so it is tested on its own and the transport
stays a thin driver around it.

A peer is *known* from the moment it proves active: we dialed it, it opened a stream to us.
Every later sign of life (a frame from it, a frame we wrote to it) calls ``touch`` again and
makes it the most recently active. A peer stops being known when the transport ``forget``s
it: its last connection closed, or gossip membership declared it dead or gone.

When a new peer arrives at a full table, the least recently active peer is evicted and
returned, so the caller can close its connections too: ``peers_max`` then bounds connections
and per-peer state, not just this dict. Evicting instead of refusing keeps a node that has
met many short-lived peers able to take new ones; the price is that a flood of fresh
identities can push out peers that were quiet for longer than the flood took (members ping
each other every second, so an active member sits near the recent end).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["PeerTable"]

V = TypeVar("V")


class PeerTable(Generic[V]):
    """Addresses of known peers, each with a value (the transport keeps the libp2p PeerID)."""

    def __init__(self, peers_max: int) -> None:
        if type(peers_max) is not int or peers_max < 1:
            raise ValueError(f"peers_max must be a positive int, got {peers_max!r}")
        self.peers_max = peers_max
        # Least recently active first: OrderedDict.move_to_end is O(1).
        self._peers: OrderedDict[str, V] = OrderedDict()

    def touch(self, address: str, value: V) -> tuple[str, V] | None:
        """Mark ``address`` active (adding it if new); return the peer evicted to make room."""
        if address in self._peers:
            self._peers[address] = value
            self._peers.move_to_end(address)
            return None
        evicted = self._peers.popitem(last=False) if len(self._peers) >= self.peers_max else None
        self._peers[address] = value
        assert len(self._peers) <= self.peers_max
        return evicted

    def refresh(self, address: str) -> None:
        """Mark a known peer active; an unknown one stays unknown (no insert, no eviction)."""
        if address in self._peers:
            self._peers.move_to_end(address)

    def get(self, address: str) -> V | None:
        return self._peers.get(address)

    def forget(self, address: str) -> V | None:
        """Drop ``address``; return its value, or None if it was not known."""
        return self._peers.pop(address, None)

    def addresses(self) -> list[str]:
        """Known addresses, least recently active first."""
        return list(self._peers)

    def __contains__(self, address: object) -> bool:
        return address in self._peers

    def __len__(self) -> int:
        return len(self._peers)
