"""A stand-in gossip core for the simulator: naive flooding plus digest anti-entropy. Pure.

Theory of operation
-------------------
``FloodCore`` implements the driver API of ``node.gossip.core.GossipCore`` (see
``node.gossip.api``) with the simplest protocol that still converges under every fault the
simulator injects, so the harness could be built and tested before the real core existed, and
so the real core has a baseline to beat (``formation-sim run broadcast-25 --core flood``).

* **No membership.** The driver hands the core the full roster as seeds (``FULL_ROSTER``);
  a node also learns any peer that sends it a packet (a node that joins later). Dead peers
  stay in the list: packets to them are simply lost. It never emits ``Notify``.
* **Push.** Ops this node writes, and ops it accepts from an eager push, wait in one batch that
  is flushed every ``flush_interval_s``: to every known peer but the op's sender (Maelstrom's
  naive flood) when there are at most ``RELAY_ALL_PEERS_MAX`` peers, otherwise to a random
  ``ceil(ln N) + 3`` of them, drawn once per flush (an epidemic push: a node misses an op with
  probability about ``e**-(ln N + 3)``, so ~5 % of ops miss one node of N and anti-entropy
  fills those in). A flood to every peer of 1,000 nodes would cost a million messages per op.
* **Anti-entropy.** Every ``sync_interval_s`` the node opens a ``node.ledger.digest``
  reconciliation with one random peer (``Sync`` carries the digest messages). Ids the peer
  lacks are sent as ops (``Gossip(eager=False)``) instead of a ``Missing`` message; ids we lack
  are requested with ``IWant``. Ops that arrive this way are not relayed: every node repairs
  itself, so a partition heal costs each op about one copy per node, not a flood.

Op ids are computed from bodies (keccak); a small process-wide memo makes that once per op per
run instead of once per copy received: it changes no behaviour, only the simulator's speed.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from node.gossip.api import OpLog
from node.gossip.config import GossipConfig
from node.gossip.messages import (
    Attach,
    Deliver,
    Effect,
    Gossip,
    IWant,
    Message,
    Packet,
    Send,
    Sync,
    WireOp,
)
from node.identity.keys import eip191_hash
from node.ledger import digest as dg
from node.ledger.op import Op

__all__ = ["FULL_ROSTER", "RELAY_ALL_PEERS_MAX", "FloodCore", "FloodStats"]

# The driver must give this core every node id as a seed: it has no membership protocol.
FULL_ROSTER: Final = True
RELAY_ALL_PEERS_MAX: Final = 32
_SALT_BYTES: Final = dg.SALT_BYTES
# Well inside node.gossip.wire's limits (1,024 messages, 4 MiB) for any config.
_MESSAGES_PER_PACKET_MAX: Final = 256
_SYNC_BYTES_PER_PACKET_MAX: Final = 1 << 20


@functools.lru_cache(maxsize=1 << 16)
def _op_id(body: bytes) -> bytes:
    return eip191_hash(body)


@dataclass
class FloodStats:
    """Counters (monotonic since start), named like ``GossipStats`` where they overlap."""

    packets_sent: int = 0
    ops_pushed: int = 0
    ops_received: int = 0
    duplicates_received: int = 0
    syncs_started: int = 0
    bad_sync_messages: int = 0


class FloodCore:
    """One node's flooding engine. Same constructor and methods as ``GossipCore``."""

    def __init__(
        self,
        node_id: str,
        addr: str,
        config: GossipConfig,
        rng: random.Random,
        log: OpLog,
        *,
        incarnation: int = 0,
    ) -> None:
        self.node_id = node_id
        self.addr = addr
        self.config = config
        self.rng = rng
        self.log = log
        self.incarnation = incarnation
        self.stats = FloodStats()
        self._peers: list[str] = []
        self._known: set[str] = set()
        # Ops waiting for the next flush, with the peer each came from (None: written here).
        self._batch: list[tuple[WireOp, str | None]] = []
        self._flush_at = math.inf
        self._next_sync = math.inf
        self._session = rng.randrange(1 << 32)
        # Ids of the last Deliver that came from eager pushes: ``on_ops_accepted`` relays only
        # those. (The simulator answers a Deliver at once, before any other call.)
        self._relay: set[bytes] = set()
        self._left = False

    # -- driver API ----------------------------------------------------------------------------

    def start(self, now: float, seeds: Sequence[str] = ()) -> list[Effect]:
        for peer in seeds:
            self._learn(peer)
        # Spread the periodic work of nodes started together over one period.
        self._next_sync = now + self.rng.uniform(0.1, 1.0) * self.config.sync_interval_s
        return []

    def add_seed(self, now: float, node_id: str, addr: str) -> list[Effect]:
        self._learn(node_id)
        return []

    def leave(self, now: float) -> list[Effect]:
        self._left = True
        self._next_sync = math.inf
        return self._flush(now)

    def next_wakeup(self) -> float:
        return min(self._flush_at, self._next_sync)

    def members(self) -> dict[str, str]:
        return dict.fromkeys(self._peers, "")

    def broadcast(self, now: float, ops: Sequence[Op]) -> list[Effect]:
        self._push(now, [(op.body, op.sig) for op in ops], None)
        return []

    def on_ops_accepted(self, now: float, ops: Sequence[Op], sender: str) -> list[Effect]:
        relay = [(op.body, op.sig) for op in ops if op.id in self._relay]
        self._relay.clear()
        if relay:
            self._push(now, relay, sender)
        return []

    def on_packet(self, now: float, packet: Packet) -> list[Effect]:
        sender = packet.sender
        if sender == self.node_id or self._left:
            return []
        if sender not in self._known:
            self._learn(sender)
        effects: list[Effect] = []
        replies: list[Message] = []
        fresh: list[WireOp] = []
        fresh_ids: set[bytes] = set()
        for msg in packet.messages:
            if isinstance(msg, Gossip):
                for wire in msg.ops:
                    self.stats.ops_received += 1
                    op_id = _op_id(wire[0])
                    if op_id in fresh_ids or self.log.has(op_id):
                        self.stats.duplicates_received += 1
                        continue
                    fresh_ids.add(op_id)
                    fresh.append(wire)
                    if msg.eager:
                        self._relay.add(op_id)
            elif isinstance(msg, IWant | Attach):
                self._send_ops(sender, self.log.get_wire(msg.ids), effects)
            elif isinstance(msg, Sync):
                replies += self._on_sync(sender, msg, effects)
        if replies:
            self._send(sender, replies, effects)
        if fresh:
            effects.append(Deliver(tuple(fresh), sender))
        return effects

    def on_timer(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if now >= self._flush_at:
            effects += self._flush(now)
        if now >= self._next_sync:
            self._next_sync = now + self.config.sync_interval_s
            if self._peers:
                peer = self._peers[self.rng.randrange(len(self._peers))]
                self.stats.syncs_started += 1
                self._session = (self._session + 1) & 0xFFFFFFFF
                opening = dg.opening(self.log.digest, self.rng.randbytes(_SALT_BYTES))
                self._send(peer, [Sync(self._session, opening.encode())], effects)
        return effects

    # -- internals -----------------------------------------------------------------------------

    def _learn(self, peer: str) -> None:
        if peer != self.node_id and peer not in self._known:
            self._known.add(peer)
            self._peers.append(peer)

    def _targets(self) -> list[str]:
        peers = self._peers
        if len(peers) <= RELAY_ALL_PEERS_MAX:
            return peers
        return self.rng.sample(peers, math.ceil(math.log(len(peers))) + 3)

    def _push(self, now: float, wires: list[WireOp], sender: str | None) -> None:
        if self._left:
            return
        self._batch += [(wire, sender) for wire in wires]
        if self._flush_at == math.inf:
            self._flush_at = now + self.config.flush_interval_s

    def _flush(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        batch, self._batch = self._batch, []
        self._flush_at = math.inf
        if not batch:
            return effects
        senders = {sender for _, sender in batch}
        for peer in self._targets():
            if peer in senders:
                wires = [wire for wire, sender in batch if sender != peer]
                if wires:
                    self._send_ops(peer, wires, effects, eager=True)
            else:
                self._send_ops(peer, [wire for wire, _ in batch], effects, eager=True)
        return effects

    def _send_ops(
        self, peer: str, wires: Iterable[WireOp], effects: list[Effect], *, eager: bool = False
    ) -> None:
        batch = list(wires)
        step = self.config.ops_per_packet_max
        for start in range(0, len(batch), step):
            chunk = tuple(batch[start : start + step])
            self.stats.ops_pushed += len(chunk)
            self._send(peer, [Gossip(chunk, eager)], effects)

    def _on_sync(self, sender: str, msg: Sync, effects: list[Effect]) -> list[Message]:
        try:
            step = dg.respond(self.log.digest, dg.decode(msg.body))
        except ValueError:
            self.stats.bad_sync_messages += 1
            return []
        replies: list[Message] = []
        for reply in step.replies:
            if isinstance(reply, dg.Missing):
                self._send_ops(sender, self.log.get_wire(reply.ids), effects)
            else:
                replies.append(Sync(msg.session, reply.encode()))
        lacking = step.lacking
        step_ids = self.config.ids_per_packet_max
        for start in range(0, len(lacking), step_ids):
            replies.append(IWant(tuple(lacking[start : start + step_ids])))
        return replies

    def _send(self, peer: str, messages: list[Message], effects: list[Effect]) -> None:
        # One reconciliation flight can hold hundreds of digest messages: split it so every
        # packet stays within the wire limits (messages per packet, bytes per packet).
        # (Messages per kind: the simulator counts those itself.)
        if len(messages) == 1:
            self.stats.packets_sent += 1
            effects.append(Send(peer, Packet(self.node_id, (messages[0],))))
            return
        start = 0
        while start < len(messages):
            end = start
            body_bytes = 0
            while end < len(messages) and end - start < _MESSAGES_PER_PACKET_MAX:
                msg = messages[end]
                body_bytes += len(msg.body) if isinstance(msg, Sync) else 0
                if body_bytes > _SYNC_BYTES_PER_PACKET_MAX and end > start:
                    break
                end += 1
            self.stats.packets_sent += 1
            effects.append(Send(peer, Packet(self.node_id, tuple(messages[start:end]))))
            start = end
