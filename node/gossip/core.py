"""The gossip engine: membership, tree broadcast of ops, lazy repair, anti-entropy. Pure.

Long on purpose: one state machine (tree push, lazy repair, anti-entropy, batching) whose timers and tables interlock.

Theory of operation
-------------------
Three mechanisms, each covering what the one before it misses:

1. **Tree push over a two-level rendezvous tree.** Every node ranks the alive members by a
   hash of their id; the ``ceil(sqrt(N))`` lowest ranks are the *core*, a full mesh, and every
   other node is a *leaf* attached to the core member its id hashes closest to (rendezvous
   hashing, so a membership change moves few leaves). A leaf tells its parent with
   ``Attach(())`` (attach) and refreshes that every ``attach_refresh_s``; a parent's *children*
   are the nodes attached to it; a new child is sent the ops its parent passed on in the last
   ``attach_catch_up_s``, so the ops that crossed its Attach in flight are not left to repair;
   likewise a node that (re)started knowing nobody sends its first tree the ops it wrote alone.
   An op travels leaf → parent → the other core members → their
   children: at most three hops, and N-1 payload copies. A leaf also sends its *own* ops to
   its second-choice core member, so one lost first hop does not leave the whole fog waiting
   for repair (N-1 + |core| copies in all). Traffic concentrates on few links, so
   batching (below) fills messages, which is what keeps messages per op low.
   Every node computes the roles from its own membership view; views that briefly disagree
   only cause duplicates (harmless) or gaps (repaired by 2 and 3). No node coordinates.
   *Why not Plumtree's pruned tree:* we built it first; with a hundred ops per second from many
   origins, concurrent prunes cut the shared tree over and over, grafts re-grew cycles, and it
   settled at 40-80 messages per op and a p99 over 700 ms on the broadcast-25 set-up
   (docs/decisions.md, D7).
2. **Lazy repair.** Every op a node accepts is announced by id (``IHave``) to
   ``lazy_peers`` random members, batched every ``ihave_interval_s``. A node that hears of an
   op and does not receive it within ``ihave_timeout_s`` asks the announcer (``IWant``); the op
   it gets is forwarded on the tree like any other, so one lost tree message costs one
   timeout, not a subtree's worth of loss.
3. **Anti-entropy.** Every ``sync_interval_s`` a node reconciles its whole op set with one
   random alive member (``node.ledger.digest``: cost proportional to the difference). Whatever
   push and repair missed (partitions, restarts) arrives this way.

Membership (SWIM + Lifeguard) lives in ``node.gossip.membership``; its updates ride on every
packet. Every ``reconnect_interval_s`` a node probes one member it believes dead, so after a
partition heals the two sides find each other (the "dead" side refutes) and anti-entropy
merges them.

Batching: ops and announcements for a peer wait in its outbox and leave together, at most
``flush_interval_s`` after the first was queued; membership messages go at once and take the
outbox with them. Everything is bounded: outboxes, the missing-op table, the pending table,
children, ops and ids per packet.

Ops are not verified here: ``Deliver`` hands new ones to the driver, which verifies, stores and
applies them and then calls ``on_ops_accepted`` with the valid ones. Only accepted ops are
forwarded or announced, so an invalid op dies at its first honest hop.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.gossip.api import OpLog
from node.gossip.config import GossipConfig
from node.gossip.membership import Membership
from node.gossip.messages import (
    Ack,
    Attach,
    Deliver,
    Detach,
    Effect,
    Gossip,
    IHave,
    IWant,
    Join,
    MemberState,
    Message,
    Nack,
    Packet,
    Ping,
    PingReq,
    Send,
    Sync,
    Welcome,
    WireOp,
)
from node.identity.keys import eip191_hash
from node.ledger import digest as dg
from node.ledger.op import Op

__all__ = ["GossipCore", "GossipStats"]

_MEMBERSHIP_MESSAGES = (Ping, Ack, PingReq, Nack, Join, Welcome)
# Ids handed to the driver but not yet reported accepted are forgotten after this long (a
# rejected op is never reported; forgetting lets a later valid copy through).
_PENDING_TTL_S = 30.0
# While a fog forms, membership changes many times a second; recomputing the tree's roles on
# each change costs O(N log sqrt N) and moves nobody that a later change would not move again.
_ROLES_RECOMPUTE_S = 0.5


@dataclass
class GossipStats:
    """Counters for metrics, tests and the simulator (monotonic since start)."""

    packets_sent: int = 0
    messages_sent: dict[str, int] = field(default_factory=dict)
    ops_pushed: int = 0  # op copies sent in Gossip messages (eager or not)
    ops_received: int = 0
    duplicates_received: int = 0
    repairs_requested: int = 0  # ids asked for after an IHAVE timed out
    syncs_started: int = 0
    outbox_dropped: int = 0


@dataclass
class _Outbox:
    ops: list[WireOp] = field(default_factory=list)
    eager: bool = True  # False once any non-eager op is queued: the batch is no tree push
    ihave: list[bytes] = field(default_factory=list)
    other: list[Message] = field(default_factory=list)
    flush_at: float | None = None
    ihave_at: float | None = None


@dataclass
class _SyncSession:
    peer: str
    started: float
    flights: int = 0


# Below node.gossip.wire's messages_per_packet_max (1,024), with room for the outbox.
_MESSAGES_PER_PACKET_MAX = 512


@functools.lru_cache(maxsize=65536)
def _rank(node: str) -> bytes:
    """A node's place in the tree: a hash of its id, so every node computes the same order."""
    return hashlib.blake2b(node.encode(), digest_size=8).digest()


def _approx_bytes(msg: Message) -> int:
    if isinstance(msg, Sync):
        return len(msg.body) + 16
    if isinstance(msg, Gossip):
        return sum(len(body) + 72 for body, _ in msg.ops)
    return 40 + 33 * _id_count(msg)


def _id_count(msg: Message) -> int:
    return len(msg.ids) if isinstance(msg, Attach | IWant | IHave) else 0


class GossipCore:
    """One node's gossip engine. See the module docstring and ``node.gossip.api``."""

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
        self.config = config
        self.rng = rng
        self.log = log
        self.membership = Membership(node_id, addr, config, rng, incarnation)
        self.stats = GossipStats()
        # The tree (see the module docstring): rank cache, roles, our attachment, children.
        self._ranked: list[tuple[bytes, str]] = []  # (rank, node), ascending
        self._ranked_set: set[str] = set()
        self._roles_cache: tuple[tuple[str, ...], str | None] | None = None
        self._membership_changed = True
        self._roles_at = 0.0
        self._backup_parent: str | None = None
        # Set when our view stops being just ourselves: the ops we wrote while alone went to
        # no tree target, so they go to the tree we now have (``_maintain_tree``).
        self._met_first: bool = False
        self._children: dict[str, float] = {}  # child -> when it last attached
        # (when, id) of the ops we passed on lately, oldest first: a new child's catch-up.
        self._recent: deque[tuple[float, bytes]] = deque()
        self._attached_to: str | None = None
        self._attached_at = 0.0
        self._lazy: list[str] = []
        self._lazy_until = 0.0
        self._outboxes: dict[str, _Outbox] = {}
        # id -> (first announced at, announcers in order): ops heard of but not received.
        self._missing: OrderedDict[bytes, tuple[float, list[str]]] = OrderedDict()
        # id -> (handed to the driver at, sender, arrived eagerly)
        self._pending: OrderedDict[bytes, tuple[float, str, bool]] = OrderedDict()
        self._sessions: dict[int, _SyncSession] = {}
        self._session_seq = rng.randrange(1 << 32)
        self._next_sync = 0.0
        self._next_reconnect = 0.0
        self._reconcile = dg.ReconcileConfig()
        self._started = False
        self._left = False

    # -- driver API ----------------------------------------------------------------------------

    def start(self, now: float, seeds: Sequence[str] = ()) -> list[Effect]:
        self._started = True
        # Spread the periodic work of many nodes started at once over one period.
        self._next_sync = now + self.rng.uniform(0.5, 1.0) * self.config.sync_interval_s
        self._next_reconnect = now + self.config.reconnect_interval_s
        effects: list[Effect] = []
        for to, msg in self.membership.join(now, [s for s in seeds if s != self.node_id]):
            self._send_now(now, to, [msg], effects)
        return effects

    def add_seed(self, now: float, node_id: str, addr: str) -> list[Effect]:
        effects: list[Effect] = []
        if node_id != self.node_id:
            for to, msg in self.membership.add_seed(now, node_id, addr):
                self._send_now(now, to, [msg], effects)
        return effects

    def leave(self, now: float) -> list[Effect]:
        """Say goodbye: tell a few members directly; the rest hear it by gossip."""
        self._left = True
        effects: list[Effect] = []
        for to, msg in self.membership.leave(now):
            self._send_now(now, to, [msg], effects)
        return effects

    def next_wakeup(self) -> float:
        times = [self.membership.next_wakeup(), self._next_sync, self._next_reconnect]
        for box in self._outboxes.values():
            if box.flush_at is not None:
                times.append(box.flush_at)
            if box.ihave_at is not None:
                times.append(box.ihave_at)
        if self._missing:
            first_at, _ = next(iter(self._missing.values()))
            times.append(first_at + self.config.ihave_timeout_s)
        return min(times)

    def members(self) -> dict[str, str]:
        """Alive members (not self) and their addresses."""
        return {n: self.membership.addr_of(n) or "" for n in self.membership.alive()}

    def broadcast(self, now: float, ops: Sequence[Op]) -> list[Effect]:
        """Disseminate ops this node wrote (already stored and applied locally)."""
        effects: list[Effect] = []
        self._forward(now, [((op.body, op.sig), op.id) for op in ops], None, True, effects)
        return effects

    def on_ops_accepted(self, now: float, ops: Sequence[Op], sender: str) -> list[Effect]:
        """The driver stored and applied these ops (from a ``Deliver``): pass them on."""
        effects: list[Effect] = []
        eager_groups: dict[bool, list[tuple[WireOp, bytes]]] = {True: [], False: []}
        for op in ops:
            pending = self._pending.pop(op.id, None)
            eager = pending[2] if pending is not None else False
            self._missing.pop(op.id, None)
            eager_groups[eager].append(((op.body, op.sig), op.id))
        for eager, group in eager_groups.items():
            if group:
                self._forward(now, group, sender, eager, effects)
        return effects

    def on_packet(self, now: float, packet: Packet) -> list[Effect]:
        effects: list[Effect] = []
        sender = packet.sender
        if sender == self.node_id:
            return effects
        self.membership.heard_from(now, sender)
        if packet.updates:
            self.membership.on_updates(now, sender, packet.updates)
        immediate: list[Message] = []
        for msg in packet.messages:
            if isinstance(msg, _MEMBERSHIP_MESSAGES):
                for to, reply in self.membership.on_message(now, sender, msg):
                    if to == sender:
                        immediate.append(reply)
                    else:
                        self._send_now(now, to, [reply], effects)
            elif isinstance(msg, Gossip):
                self._on_gossip(now, sender, msg, effects)
            elif isinstance(msg, IHave):
                self._on_ihave(now, sender, msg)
            elif isinstance(msg, Attach):
                # Attach(()) is "I am your child": push everything to me from now on.
                if sender in self._children:
                    self._children[sender] = now
                elif len(self._children) < self.config.children_max:
                    self._children[sender] = now
                    self._catch_up(now, sender)
                if msg.ids:
                    self._queue_ops(now, sender, self.log.get_wire(msg.ids), eager=False)
            elif isinstance(msg, IWant):
                self._queue_ops(now, sender, self.log.get_wire(msg.ids), eager=False)
            elif isinstance(msg, Detach):
                self._children.pop(sender, None)
            elif isinstance(msg, Sync):
                immediate += self._on_sync(now, sender, msg)
        if immediate:
            self._send_now(now, sender, immediate, effects)
        self._after_membership(now, effects)
        return effects

    def on_timer(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for to, msg in self.membership.on_timer(now):
            self._send_now(now, to, [msg], effects)
        self._after_membership(now, effects)
        self._request_missing(now, effects)
        if now >= self._next_sync:
            self._next_sync = now + self.config.sync_interval_s
            self._start_sync(now, effects)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.reconnect_interval_s
            self._reconnect(now, effects)
        for peer, box in list(self._outboxes.items()):
            if (box.flush_at is not None and now >= box.flush_at) or (
                box.ihave_at is not None and now >= box.ihave_at
            ):
                self._send_now(now, peer, [], effects)
        self._expire(now)
        return effects

    # -- dissemination -------------------------------------------------------------------------

    def _on_gossip(self, now: float, sender: str, msg: Gossip, effects: list[Effect]) -> None:
        fresh: list[WireOp] = []
        for wire in msg.ops:
            self.stats.ops_received += 1
            op_id = eip191_hash(wire[0])
            if op_id in self._pending or self.log.has(op_id):
                self.stats.duplicates_received += 1
                continue
            if len(self._pending) >= self.config.recent_ids_max:
                self._pending.popitem(last=False)
            self._pending[op_id] = (now, sender, msg.eager)
            self._missing.pop(op_id, None)
            fresh.append(wire)
        if fresh:
            effects.append(Deliver(tuple(fresh), sender))

    def _tree_targets(self, now: float, sender: str | None) -> list[str]:
        core, parent = self._roles(now)
        targets = set(self._children) - {sender}
        if self.node_id in core:
            if sender not in core:  # from a leaf (or local): the core mesh carries it on
                targets |= set(core)
        elif parent is not None and sender != parent:
            targets.add(parent)
            if sender is None and self._backup_parent is not None:
                # Our own ops also go to a second core member: one lost leaf -> parent push
                # would otherwise leave the whole fog waiting for repair. Costs about
                # 2 x sqrt(N) extra copies per op (the backup's core pushes and children).
                targets.add(self._backup_parent)
        targets.discard(self.node_id)
        if sender is not None:
            targets.discard(sender)
        return sorted(targets)

    def _forward(
        self,
        now: float,
        ops: list[tuple[WireOp, bytes]],
        sender: str | None,
        eager: bool,
        effects: list[Effect],
    ) -> None:
        if self._left or not ops:
            return
        wires = [wire for wire, _ in ops]
        self._remember_recent(now, [op_id for _, op_id in ops])
        for peer in self._tree_targets(now, sender):
            self._queue_ops(now, peer, wires, eager=eager)
        ids = [op_id for _, op_id in ops]
        for peer in self._lazy_targets(now):
            if peer != sender:
                box = self._box(peer)
                box.ihave.extend(ids)
                if box.ihave_at is None:
                    box.ihave_at = now + self.config.ihave_interval_s

    def _remember_recent(self, now: float, ids: list[bytes]) -> None:
        recent = self._recent
        recent.extend((now, op_id) for op_id in ids)
        horizon = now - self.config.attach_catch_up_s
        while recent and (recent[0][0] < horizon or len(recent) > self.config.recent_ids_max):
            recent.popleft()

    def _catch_up(self, now: float, child: str) -> None:
        """A new child gets the ops we passed on in the last ``attach_catch_up_s``.

        A leaf that changes parent sends Detach to the old one and Attach to the new one at
        once; ops that reach the new parent while the Attach is in flight would otherwise
        reach the child only by IHAVE repair (an announcement batch, the timeout and a round
        trip: 0.8-1.3 s on broadcast-25, the whole propagation tail there). The copies the
        child already has cost bytes, not messages: they ride in one batch.
        """
        horizon = now - self.config.attach_catch_up_s
        ids = [op_id for at, op_id in self._recent if at >= horizon]
        if ids:
            self._queue_ops(now, child, self.log.get_wire(ids), eager=False)

    def _on_ihave(self, now: float, sender: str, msg: IHave) -> None:
        for op_id in msg.ids:
            if op_id in self._pending or self.log.has(op_id):
                continue
            entry = self._missing.get(op_id)
            if entry is None:
                if len(self._missing) >= self.config.recent_ids_max:
                    self._missing.popitem(last=False)  # anti-entropy will find it
                self._missing[op_id] = (now, [sender])
            elif sender not in entry[1] and len(entry[1]) < 8:
                entry[1].append(sender)

    def _request_missing(self, now: float, effects: list[Effect]) -> None:
        timeout = self.config.ihave_timeout_s
        wanted: dict[str, list[bytes]] = {}
        retry: list[tuple[bytes, tuple[float, list[str]]]] = []
        while self._missing:
            op_id, (first_at, announcers) = next(iter(self._missing.items()))
            if first_at + timeout > now:
                break
            del self._missing[op_id]
            if self.log.has(op_id) or op_id in self._pending:
                continue
            wanted.setdefault(announcers[0], []).append(op_id)
            if len(announcers) > 1:  # ask the next announcer if this one does not answer
                retry.append((op_id, (now, announcers[1:])))
        for op_id, entry in retry:
            self._missing[op_id] = entry
        chunk = self.config.ids_per_packet_max
        for peer, ids in sorted(wanted.items()):
            for start in range(0, len(ids), chunk):
                self._queue(now, peer, IWant(tuple(ids[start : start + chunk])))
            self.stats.repairs_requested += len(ids)
            self._send_now(now, peer, [], effects)

    # -- the tree ------------------------------------------------------------------------------

    def _roles(self, now: float) -> tuple[tuple[str, ...], str | None]:
        """(core members, our parent or None), recomputed when membership changed."""
        # The rate limit does not hold a lone view: a node that has just (re)started knows
        # only itself, and until it recomputes its own ops would go to no tree target at all
        # (churn-small seed 783: five ops of a restarted node never left it).
        lonely = self._roles_cache is not None and self._roles_cache[0] == (self.node_id,)
        if self._roles_cache is not None and (
            not self._membership_changed
            or (now < self._roles_at + _ROLES_RECOMPUTE_S and not lonely)
        ):
            return self._roles_cache
        self._membership_changed = False
        self._roles_at = now
        # Members stay in a list sorted by rank, updated by the difference between the alive
        # set now and at the last recompute: with a thousand members that is far cheaper
        # than ranking everyone again (this was the simulator's hottest function).
        alive = set(self.membership.alive())
        alive.add(self.node_id)
        for gone in self._ranked_set - alive:
            del self._ranked[bisect.bisect_left(self._ranked, (_rank(gone), gone))]
        for new in alive - self._ranked_set:
            bisect.insort(self._ranked, (_rank(new), new))
        self._ranked_set = alive
        size = math.isqrt(len(alive) - 1) + 1  # ceil(sqrt(N))
        core = tuple(sorted(node for _, node in self._ranked[:size]))
        parent: str | None = None
        backup: str | None = None
        if self.node_id not in core:
            me = self.node_id.encode()
            ordered = sorted(
                core, key=lambda c: hashlib.blake2b(me + c.encode(), digest_size=8).digest()
            )
            parent = ordered[0]
            backup = ordered[1] if len(ordered) > 1 else None
        self._backup_parent = backup
        if lonely and core != (self.node_id,):
            self._met_first = True
        self._roles_cache = (core, parent)
        return self._roles_cache

    def _maintain_tree(self, now: float, effects: list[Effect]) -> None:
        """Attach to our parent when it changes, and re-attach now and then."""
        _, parent = self._roles(now)
        if self._met_first:
            # Like a new child's catch-up: what we passed on in the last attach_catch_up_s,
            # here our own ops written while we knew nobody, in one non-eager batch each.
            self._met_first = False
            for peer in self._tree_targets(now, None):
                self._catch_up(now, peer)
        if parent != self._attached_to or (
            parent is not None and now >= self._attached_at + self.config.attach_refresh_s
        ):
            if self._attached_to is not None and self._attached_to != parent:
                self._queue(now, self._attached_to, Detach())  # detach from the old parent
                self._send_now(now, self._attached_to, [], effects)
            self._attached_to = parent
            self._attached_at = now
            if parent is not None:
                self._send_now(now, parent, [Attach(())], effects)
        # Children that stopped refreshing their attachment are gone (or re-parented).
        horizon = now - 3 * self.config.attach_refresh_s
        for child, at in list(self._children.items()):
            if at < horizon:
                del self._children[child]

    def _lazy_targets(self, now: float) -> list[str]:
        # An empty list is refreshed at once (a node that started alone has met someone since;
        # the alive list of a lone node is short, so this costs nothing on a big fog).
        if (
            now >= self._lazy_until
            or any(self.membership.state_of(p) != MemberState.ALIVE for p in self._lazy)
            or (not self._lazy and self.membership.alive())
        ):
            alive = self.membership.alive()
            count = min(self.config.lazy_peers, len(alive))
            self._lazy = sorted(self.rng.sample(alive, count)) if count else []
            self._lazy_until = now + self.config.lazy_refresh_s
        return self._lazy

    def _after_membership(self, now: float, effects: list[Effect]) -> None:
        events = self.membership.drain_events()
        for event in events:
            effects.append(event)
            self._membership_changed = True
            if event.event in ("dead", "left"):
                self._children.pop(event.node, None)
                self._outboxes.pop(event.node, None)
        if self._started and not self._left:
            self._maintain_tree(now, effects)

    def _reconnect(self, now: float, effects: list[Effect]) -> None:
        dead = self.membership.dead()
        if dead:
            peer = self.rng.choice(dead)
            # A ping from us carries our updates, including the other side's view of us;
            # whichever side is wrong about the other refutes, and the partition heals.
            self._send_now(now, peer, [Ping(seq=0)], effects)

    # -- anti-entropy --------------------------------------------------------------------------

    def _start_sync(self, now: float, effects: list[Effect]) -> None:
        alive = self.membership.alive()
        if not alive:
            return
        peer = self.rng.choice(alive)
        self._session_seq = (self._session_seq + 1) & 0xFFFFFFFF
        session = self._session_seq
        self._sessions[session] = _SyncSession(peer, now)
        salt = self.rng.randbytes(dg.SALT_BYTES)
        opening = dg.opening(self.log.digest, salt, self._reconcile)
        self.stats.syncs_started += 1
        self._send_now(now, peer, [Sync(session, opening.encode())], effects)

    def _on_sync(self, now: float, sender: str, msg: Sync) -> list[Message]:
        own = self._sessions.get(msg.session)
        if own is not None:
            if own.peer != sender:
                return []
            own.flights += 1
            if own.flights > self.config.sync_flights_max:
                del self._sessions[msg.session]
                return []
        try:
            body = dg.decode(msg.body)
        except dg.BadMessage:
            return []  # a peer speaking garbage gets no answer (the driver logs the packet)
        step = dg.respond(self.log.digest, body, self._reconcile)
        replies: list[Message] = []
        for reply in step.replies:
            if isinstance(reply, dg.Missing):
                self._queue_ops(now, sender, self.log.get_wire(reply.ids), eager=False)
            else:
                replies.append(Sync(msg.session, reply.encode()))
        lacking = [op_id for op_id in step.lacking if op_id not in self._pending]
        chunk = self.config.ids_per_packet_max
        for start in range(0, len(lacking), chunk):
            self._queue(now, sender, IWant(tuple(lacking[start : start + chunk])))
        return replies

    # -- packets -------------------------------------------------------------------------------

    def _box(self, peer: str) -> _Outbox:
        box = self._outboxes.get(peer)
        if box is None:
            box = self._outboxes[peer] = _Outbox()
        return box

    def _queue(self, now: float, peer: str, msg: Message) -> None:
        box = self._box(peer)
        box.other.append(msg)
        if box.flush_at is None:
            box.flush_at = now + self.config.flush_interval_s

    def _queue_ops(self, now: float, peer: str, wires: Iterable[WireOp], *, eager: bool) -> None:
        box = self._box(peer)
        for wire in wires:
            if len(box.ops) >= self.config.recent_ids_max:
                self.stats.outbox_dropped += 1  # a stuck peer: anti-entropy catches it up later
                continue
            box.ops.append(wire)
            if not eager:
                box.eager = False
        if box.ops and box.flush_at is None:
            box.flush_at = now + self.config.flush_interval_s

    def _send_now(
        self, now: float, peer: str, messages: list[Message], effects: list[Effect]
    ) -> None:
        """Send ``messages`` to ``peer`` now, with as much of its outbox as one packet holds.

        The packet respects the wire limits as totals (``node.gossip.wire``): ids across
        Attach/IWant/IHave, ops and op bytes across Gossip. What does not fit stays queued and
        goes at the next flush.
        """
        cfg = self.config
        box = self._outboxes.get(peer)
        batch = list(messages)
        if box is not None:
            ids_left = cfg.ids_per_packet_max - sum(_id_count(m) for m in batch)
            kept: list[Message] = []
            for msg in box.other:
                count = _id_count(msg)
                if count <= ids_left:
                    batch.append(msg)
                    ids_left -= count
                else:
                    kept.append(msg)
            box.other = kept
            if box.ops:
                ops: list[WireOp] = []
                seen: set[bytes] = set()
                bytes_left = cfg.packet_bytes_max // 2  # room for everything else in the packet
                taken = 0
                for wire in box.ops:
                    if len(ops) >= cfg.ops_per_packet_max or len(wire[0]) + 70 > bytes_left:
                        break
                    taken += 1
                    if wire[0] in seen:
                        continue  # requested twice (attach + anti-entropy): send once
                    seen.add(wire[0])
                    ops.append(wire)
                    bytes_left -= len(wire[0]) + 70
                box.ops = box.ops[taken:]
                if ops:
                    batch.append(Gossip(tuple(ops), box.eager))
                    self.stats.ops_pushed += len(ops)
                if not box.ops:
                    box.eager = True
            if (
                box.ihave
                and ids_left > 0
                and (box.ihave_at is None or now >= box.ihave_at or batch)
            ):
                # Announcements ride along with anything else going to this peer.
                take = min(ids_left, len(box.ihave))
                batch.append(IHave(tuple(box.ihave[:take])))
                box.ihave = box.ihave[take:]
                box.ihave_at = (now + cfg.ihave_interval_s) if box.ihave else None
            box.flush_at = now + cfg.flush_interval_s if (box.ops or box.other) else None
            if box.flush_at is None and box.ihave_at is None and not box.ihave:
                del self._outboxes[peer]
        updates = self.membership.take_updates(peer, cfg.updates_per_packet_max)
        if not batch and not updates:
            return
        for msg in batch:
            name = type(msg).__name__
            self.stats.messages_sent[name] = self.stats.messages_sent.get(name, 0) + 1
        # An anti-entropy answer can be hundreds of digest messages: split what one packet
        # may not carry (message count and bytes, as node.gossip.wire enforces).
        packets: list[list[Message]] = [[]]
        size_bytes = 0
        for msg in batch:
            msg_bytes = _approx_bytes(msg)
            if packets[-1] and (
                len(packets[-1]) >= _MESSAGES_PER_PACKET_MAX
                or size_bytes + msg_bytes > cfg.packet_bytes_max // 2
            ):
                packets.append([])
                size_bytes = 0
            packets[-1].append(msg)
            size_bytes += msg_bytes
        for index, chunk in enumerate(packets):
            self.stats.packets_sent += 1
            effects.append(
                Send(peer, Packet(self.node_id, tuple(chunk), updates if index == 0 else ()))
            )

    def _expire(self, now: float) -> None:
        while self._pending:
            op_id, (at, _, _) = next(iter(self._pending.items()))
            if at + _PENDING_TTL_S > now and len(self._pending) <= self.config.recent_ids_max:
                break
            del self._pending[op_id]
        for session, state in list(self._sessions.items()):
            if state.started + self.config.sync_timeout_s < now:
                del self._sessions[session]

    def describe(self) -> dict[str, Any]:
        """A snapshot for ``status`` and tests."""
        return {
            "node_id": self.node_id,
            "members_alive": len(self.membership.alive()),
            "core": list(self._roles_cache[0]) if self._roles_cache else [],
            "parent": self._attached_to,
            "children": sorted(self._children),
            "lazy": list(self._lazy),
            "missing": len(self._missing),
            "pending": len(self._pending),
            "local_health": self.membership.local_health,
        }
