"""Membership and failure detection: SWIM with the Lifeguard refinements, as a pure core.

Long on purpose: one SWIM + Lifeguard state machine, whose rules must be read together (as h11's _state.py keeps its whole machine in one file).

Theory of operation
-------------------
**Probing (SWIM).** Every protocol period one member is probed: the member list is shuffled
at the start of each round and walked in order (new members are inserted at a random place in
the rest of the round), so every live member is probed by every other within two rounds, a
bounded detection time that random selection would not give. A probe is a direct ``Ping``; if
no ``Ack`` arrives within the probe timeout, ``PingReq`` asks ``indirect_probes`` random
members to ping the target for us and forward its ``Ack``. A relay that gets no answer within
``probe_timeout_s`` says so with a ``Nack`` (Lifeguard), which tells the prober that the relay
path works, so a silent target is the target's problem, not ours. A probe with no ack after the
indirect phase makes the target SUSPECT. Only one probe is in flight at a time: the next one
starts at the later of one (scaled) period after this one started, and this one's end.

**Time line of one probe**, with ``T = probe_timeout_s x (local_health + 1)``: direct phase
``[0, T)``, indirect phase ``[T, 3T)``. ``2T`` covers a relay's own timeout plus one round trip
(the config keeps the timeout above twice the worst round trip). A late direct ack still counts.

**Suspicion (Lifeguard LHA-suspicion).** A suspect is declared DEAD when its suspicion timer
runs out. The timer starts at ``max = suspicion_max_mult x min`` and shrinks towards
``min = suspicion_mult x max(1, log10 N) x probe_interval_s`` as independent confirmations
arrive, log-scaled so the first few matter most (memberlist's formula, pure functions in
``suspicion.py``). A confirmation is a SUSPECT claim about the same incarnation from a
different *originator* (``MemberUpdate.origin``, kept on the wire, so a relayed copy of one
member's suspicion counts once, whoever relays it). Confirmations must travel: a member whose
own probe of an already-suspect member fails, or who hears a suspicion from an originator new
to it, re-disseminates that claim with its originator (memberlist's ``suspectNode`` does the
same), bounded by the ``expected`` confirmations a timer can use; and a member that hears of a
suspicion probes the suspect next, so its own verdict comes within a period instead of when
its round reaches the suspect. Without this, every survivor
suspected on its own but nobody heard of it, and a crash took the nearly full ``max`` to be
declared (D24).

**Incarnations and precedence.** A claim ``(incarnation, state)`` beats another about the same
member if it is lexicographically larger, with ALIVE < SUSPECT < DEAD = LEFT (SWIM). Only a
member raises its own incarnation: hearing itself suspected, declared dead or left (with an
incarnation at least its own) it refutes with ALIVE at that incarnation + 1; a stale accusation
only makes it re-announce its current incarnation. A member that left on purpose refutes
nothing. Accusations about members we do not know are ignored (we learn members only from ALIVE
claims), and a full table (``members_max``) ignores new members.

**Dissemination.** Every accepted change is queued once per member (a newer claim replaces an
older one) and piggybacked by ``take_updates`` on whatever the node sends, least-sent and
newest first, at most ``retransmit_mult x ceil(log10(N + 1))`` times (at least 3). Two claims
jump the queue: our own LEFT claim after ``leave`` (counted as a transmission when queued),
and our SUSPECT or DEAD claim about the recipient itself (Lifeguard's buddy system: a falsely
suspected member hears it from the next packet we send it and refutes at once; not counted,
since the accused does not spread it and packets to a crashed member would otherwise use up
the budget meant for the survivors). The queue is a lazy heap, so picking a packet's claims
costs O(k log Q), not a scan. Claims learned from a ``Welcome`` are old news and are not
re-disseminated.

**Local health (Lifeguard LHA-probe).** ``local_health`` rises by one for a failed probe with no
relay to ask, by the number of missing nacks for a failed indirect probe, and by one each time
we must refute an accusation; it falls by one for a direct ack within the timeout. Probe
interval and probe timeout are multiplied by ``local_health + 1``, capped at ``awareness_max``
(0 or 1 disables it). A node that is slow itself (CPU starvation, a saturated uplink) therefore
probes less often and waits longer, instead of accusing healthy members.

**Joining and peer exchange.** ``join`` sends ``Join`` to the seeds (retried with backoff
while we know no live member: this also rejoins a node that got isolated). A member receiving
``Join`` adds the sender as ALIVE, disseminates it, and answers ``Welcome``: its own claim, its
view of the joiner (so a restarted joiner that is remembered dead refutes it at once) and a
random sample of live members, ``welcome_members_max`` in all. Later joiners are disseminated to
everyone; earlier members a joiner did not get in its sample introduce themselves by probing
it: a packet from an unknown sender (``heard_from``) is answered, once per probe period, by a
``Join`` to that sender, whose ``Welcome`` is another sample (pull-based peer exchange). Every
``PULL_PROBE_PERIODS`` periods a node also pulls a sample from a random member, which repairs
claims that dissemination missed (a join storm can outrun the piggyback budget).

**Partitions heal** because the driver now and then pings a member from ``dead()`` (GossipCore
does, every ``reconnect_interval_s``): the packet leads with our DEAD claim about it (buddy
system), it refutes, and the refutation comes back on its ``Ack``. DEAD and LEFT members are
forgotten after ``dead_forget_s``, which is therefore also the window for healing.

**heard_from is not liveness evidence.** Member states change only through incarnation-ordered
claims, so every member converges on the same view; "I heard from it, so it is alive" would be a
local opinion that other members cannot order, and views would flap. ``heard_from`` records when
we last heard from a member (``last_heard``) and feeds peer exchange for unknown senders.

**Bad input from peers** (malformed or absurd claims, stray acks, a flood of ``PingReq``) is
dropped, counted in ``stats`` and described in ``rejections``; the core never raises on it.
Programming errors (bad constructor arguments, a negative budget, a foreign message type) raise.

The core is sans-I/O: callers pass ``now`` (seconds, any monotonic scale), randomness comes only
from the constructor's ``rng``, and dicts are iterated in insertion order or sorted, so a seeded
run is reproducible.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from node.gossip.config import GossipConfig
from node.gossip.messages import (
    Ack,
    Join,
    MemberState,
    MemberUpdate,
    Message,
    Nack,
    Notify,
    Ping,
    PingReq,
    Welcome,
)
from node.gossip.suspicion import (
    suspicion_confirmations,
    suspicion_deadline,
    suspicion_timeouts,
)

__all__ = [
    "INCARNATION_MAX",
    "Membership",
    "retransmit_limit",
    "suspicion_confirmations",
    "suspicion_deadline",
    "suspicion_timeouts",
]

# Far beyond any honest count (one refutation per nanosecond for 146 years) yet small enough
# that a refutation (+1) always stays inside every peer's accepted range.
INCARNATION_MAX: Final = 2**62
# Node ids are addresses (42 characters) in the real node; this only stops absurd strings.
NODE_ID_CHARS_MAX: Final = 256
ADDR_CHARS_MAX: Final = 1024
# Outstanding indirect probes we run for others: each requester sends at most
# indirect_probes per failed probe, so an honest cluster stays far below this.
RELAYS_MAX: Final = 64
# Unknown senders remembered for peer exchange (one Join per probe period drains them).
UNKNOWN_SENDERS_MAX: Final = 64
# Every this many probe periods a node also asks a random member for a Welcome sample: the
# membership equivalent of anti-entropy, for claims that dissemination missed (memberlist
# does a full push-pull every 30 s; a bounded sample keeps packets small).
PULL_PROBE_PERIODS: Final = 30
PULL_PROBE_PERIODS_GROWING: Final = 2
# Join retries back off from one probe interval to this many.
JOIN_BACKOFF_MULT_MAX: Final = 32
REJECTIONS_KEPT: Final = 32
_SEQ_LIMIT: Final = 2**64
_SEQ_WRAP: Final = 2**32
_LIVE: Final = (MemberState.ALIVE, MemberState.SUSPECT)
_RANK: Final = {
    MemberState.ALIVE: 0,
    MemberState.SUSPECT: 1,
    MemberState.DEAD: 2,
    MemberState.LEFT: 2,
}
_EVENT: Final = {
    MemberState.ALIVE: "up",
    MemberState.SUSPECT: "suspect",
    MemberState.DEAD: "dead",
    MemberState.LEFT: "left",
}


def retransmit_limit(config: GossipConfig, n: int) -> int:
    return max(3, config.retransmit_mult * math.ceil(math.log10(n + 1)))


@dataclass(slots=True)
class _Suspicion:
    start_s: float
    expected: int
    min_s: float
    max_s: float
    deadline_s: float
    # The originator (or, lacking one on the wire, the first sender) plus confirmers.
    confirmers: set[str]


@dataclass(slots=True)
class _Member:
    node: str
    addr: str
    state: MemberState
    incarnation: int
    since_s: float
    suspicion: _Suspicion | None = None
    heard_s: float | None = None
    origin: str = ""  # who raised the current suspicion

    def claim(self) -> MemberUpdate:
        # Built afresh: caching one per member cost ~100 KB per node at 1,000 members (fog-1000
        # peak RSS 490 -> 593 MB) to save ~5 % of the CPU.
        origin = self.origin if self.state is MemberState.SUSPECT else ""
        return MemberUpdate(self.node, self.addr, self.state, self.incarnation, origin)


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    ack_deadline_s: float
    end_s: float
    relays: tuple[str, ...] = ()
    nacks: set[str] = field(default_factory=set)
    indirect: bool = False


@dataclass(slots=True)
class _Relay:
    requester: str
    requester_seq: int
    target: str
    deadline_s: float


@dataclass(slots=True)
class _Queued:
    update: MemberUpdate
    transmits: int
    order: int


def _check_config(config: GossipConfig) -> None:
    positive = ("probe_interval_s", "probe_timeout_s", "suspicion_mult", "retransmit_mult")
    for name in positive:
        if not getattr(config, name) > 0:
            raise ValueError(f"GossipConfig.{name} must be > 0, got {getattr(config, name)!r}")
    at_least_one = ("updates_per_packet_max", "members_max", "welcome_members_max")
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ValueError(f"GossipConfig.{name} must be >= 1, got {getattr(config, name)!r}")
    for name in ("indirect_probes", "awareness_max", "dead_forget_s"):
        if getattr(config, name) < 0:
            raise ValueError(f"GossipConfig.{name} must be >= 0, got {getattr(config, name)!r}")
    if config.suspicion_max_mult < 1:
        raise ValueError(
            f"GossipConfig.suspicion_max_mult must be >= 1 (max timeout = it x min timeout), "
            f"got {config.suspicion_max_mult!r}"
        )


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= NODE_ID_CHARS_MAX


def _valid_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _SEQ_LIMIT


def _update_problem(update: object) -> str | None:
    """Why a peer's claim cannot be used, or None if it can."""
    if (
        # The common case, decoded from the wire, in one cheap test (4 million calls in a
        # 12 s run of fog-1000); anything else gets the detailed checks below.
        type(update) is MemberUpdate
        and type(update.node) is str
        and type(update.addr) is str
        and type(update.incarnation) is int
        and type(update.state) is MemberState
        and 0 < len(update.node) <= NODE_ID_CHARS_MAX
        and len(update.addr) <= ADDR_CHARS_MAX
        and 0 <= update.incarnation <= INCARNATION_MAX
    ):
        return None
    if not isinstance(update, MemberUpdate):
        return f"not a MemberUpdate: {type(update).__name__}"
    if not _valid_id(update.node):
        return f"node id must be a non-empty string of at most {NODE_ID_CHARS_MAX} characters"
    if not isinstance(update.addr, str) or len(update.addr) > ADDR_CHARS_MAX:
        return f"addr must be a string of at most {ADDR_CHARS_MAX} characters"
    if not isinstance(update.state, MemberState):
        return f"state {update.state!r} is not a MemberState"
    inc = update.incarnation
    if not isinstance(inc, int) or isinstance(inc, bool):
        return f"incarnation {inc!r} is not an integer"
    if not 0 <= inc <= INCARNATION_MAX:
        return f"incarnation {inc} is outside 0..2**62"
    return None


class Membership:
    """One node's view of the cluster: probing, suspicion, refutation and dissemination."""

    def __init__(
        self,
        self_id: str,
        self_addr: str,
        config: GossipConfig,
        rng: random.Random,
        incarnation: int = 0,
    ) -> None:
        if not _valid_id(self_id):
            raise ValueError(
                f"self_id must be a non-empty string of at most {NODE_ID_CHARS_MAX} characters, "
                f"got {self_id!r}"
            )
        if not isinstance(self_addr, str) or len(self_addr) > ADDR_CHARS_MAX:
            raise ValueError(f"self_addr must be a string of at most {ADDR_CHARS_MAX} characters")
        if isinstance(incarnation, bool) or not 0 <= incarnation < INCARNATION_MAX:
            raise ValueError(
                f"incarnation must be in 0..2**62-1, got {incarnation!r} "
                "(pass the value persisted at the last shutdown, or 0)"
            )
        _check_config(config)
        self.self_id = self_id
        self.self_addr = self_addr
        self.config = config
        self._rng = rng
        self._incarnation = incarnation
        self._left = False
        self._awareness = 0
        self._members: dict[str, _Member] = {}
        self._live = 0  # members (not self) that are ALIVE or SUSPECT
        self._dead: set[str] = set()  # DEAD (not LEFT) members not forgotten yet
        # ALIVE members (not self), kept sorted as states change: peer sampling and the
        # public view read it at every probe and Welcome, so it is never rebuilt (at 1,000
        # members a rebuild per change was the core's largest cost during a join storm).
        self._alive: list[str] = []
        self._queue: dict[str, _Queued] = {}
        # (transmits, -order, node) of every queued claim, plus stale entries that no longer
        # match the queue (skipped when popped, compacted when they pile up): the next claims
        # to send in O(k log Q), not a scan of the whole queue per packet.
        self._queue_heap: list[tuple[int, int, str]] = []
        self._order = 0
        self._timers: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._next_probe_s: float | None = None
        self._relays: dict[int, _Relay] = {}
        self._seeds: dict[str, str] = {}
        self._join_next_s: float | None = None
        self._join_backoff_s = config.probe_interval_s
        self._unknown_senders: dict[str, None] = {}
        self._periods = 0
        self._next_pull_period = PULL_PROBE_PERIODS_GROWING
        self._size_at_last_pull = 0
        self._events: list[Notify] = []
        self.stats: Counter[str] = Counter()
        self.rejections: deque[str] = deque(maxlen=REJECTIONS_KEPT)
        self._enqueue(self._self_claim())

    # -- read-only views ---------------------------------------------------------------------

    @property
    def local_health(self) -> int:
        """Lifeguard awareness score: 0 is healthy; timeouts scale by ``local_health + 1``."""
        return self._awareness

    @property
    def incarnation(self) -> int:
        """Our own incarnation (persist it across restarts to refute old claims quickly)."""
        return self._incarnation

    def alive(self) -> list[str]:
        """Members in state ALIVE, not self, sorted by id."""
        return list(self._alive)

    def dead(self) -> list[str]:
        """Members declared DEAD (not LEFT) and not forgotten yet, sorted by id."""
        return sorted(self._dead)

    def addr_of(self, node: str) -> str | None:
        if node == self.self_id:
            return self.self_addr or None
        member = self._members.get(node)
        if member is not None and member.addr:
            return member.addr
        return self._seeds.get(node) or None

    def state_of(self, node: str) -> MemberState | None:
        if node == self.self_id:
            return MemberState.LEFT if self._left else MemberState.ALIVE
        member = self._members.get(node)
        return None if member is None else member.state

    def incarnation_of(self, node: str) -> int | None:
        if node == self.self_id:
            return self._incarnation
        member = self._members.get(node)
        return None if member is None else member.incarnation

    def last_heard(self, node: str) -> float | None:
        member = self._members.get(node)
        return None if member is None else member.heard_s

    def size(self) -> int:
        """Members known ALIVE or SUSPECT, including self (unless we left)."""
        return self._live + (0 if self._left else 1)

    def known(self) -> int:
        """Entries in the member table, self included (what ``members_max`` bounds)."""
        return len(self._members) + 1

    def drain_events(self) -> list[Notify]:
        events, self._events = self._events, []
        return events

    # -- driver entry points -----------------------------------------------------------------

    def join(self, now: float, seeds: Sequence[str]) -> list[tuple[str, Message]]:
        self._start(now)
        for seed in seeds:
            if not _valid_id(seed):
                raise ValueError(f"seed ids must be non-empty strings, got {seed!r}")
        for seed in seeds:
            if seed != self.self_id:
                self._seeds.setdefault(seed, "")
        return self._send_joins(now, [s for s in seeds if s != self.self_id])

    def add_seed(self, now: float, node: str, addr: str) -> list[tuple[str, Message]]:
        self._start(now)
        if not _valid_id(node):
            raise ValueError(f"seed id must be a non-empty string, got {node!r}")
        if not isinstance(addr, str) or len(addr) > ADDR_CHARS_MAX:
            raise ValueError(f"seed addr must be a string of at most {ADDR_CHARS_MAX} characters")
        if node == self.self_id or self._left:
            return []
        self._seeds[node] = addr
        return self._send_joins(now, [node])

    def heard_from(self, now: float, sender: str) -> None:
        """A packet from ``sender`` arrived. Not liveness evidence (see the module docstring)."""
        self._start(now)
        if not _valid_id(sender) or sender == self.self_id:
            return
        member = self._members.get(sender)
        if member is not None:
            member.heard_s = now
        elif len(self._unknown_senders) < UNKNOWN_SENDERS_MAX:
            self._unknown_senders[sender] = None

    def on_updates(self, now: float, sender: str, updates: Sequence[MemberUpdate]) -> None:
        self._start(now)
        if not _valid_id(sender) or sender == self.self_id:
            self._reject(f"updates from sender {sender!r}: not a valid peer id; dropped")
            return
        cap = self.config.updates_per_packet_max
        if len(updates) > cap:
            self._reject(
                f"{len(updates)} updates from {sender!r} exceed updates_per_packet_max={cap}; "
                "the excess was dropped"
            )
        for update in updates[:cap]:
            self._apply(now, update, sender, disseminate=True)

    def on_message(
        self, now: float, sender: str, msg: Ping | Ack | PingReq | Nack | Join | Welcome
    ) -> list[tuple[str, Message]]:
        self._start(now)
        if not isinstance(msg, Ping | Ack | PingReq | Nack | Join | Welcome):
            raise TypeError(
                f"Membership.on_message takes Ping, Ack, PingReq, Nack, Join or Welcome, "
                f"got {type(msg).__name__}: route other messages elsewhere"
            )
        if not _valid_id(sender) or sender == self.self_id:
            self._reject(f"{type(msg).__name__} from sender {sender!r}: not a valid peer id")
            return []
        if isinstance(msg, Join):
            return self._on_join(now, sender, msg)
        if isinstance(msg, Welcome):
            return self._on_welcome(now, sender, msg)
        if not _valid_seq(msg.seq):
            self._reject(f"{type(msg).__name__} from {sender!r}: seq {msg.seq!r} is not a u64")
            return []
        if isinstance(msg, Ping):
            return [(sender, Ack(msg.seq))]
        if isinstance(msg, Ack):
            return self._on_ack(now, sender, msg.seq)
        if isinstance(msg, Nack):
            self._on_nack(sender, msg.seq)
            return []
        return self._on_ping_req(now, sender, msg)

    def take_updates(self, to: str, budget: int) -> tuple[MemberUpdate, ...]:
        """Claims to piggyback on a packet to ``to``: at most ``budget`` (and the config cap)."""
        if budget < 0:
            raise ValueError(f"budget must be >= 0 updates, got {budget}")
        room = min(budget, self.config.updates_per_packet_max)
        if room == 0:
            return ()
        out: list[MemberUpdate] = []
        covered: set[str] = set()
        if self._left:
            out.append(self._self_claim())
            covered.add(self.self_id)
        member = self._members.get(to)
        if (
            member is not None
            and member.state in (MemberState.SUSPECT, MemberState.DEAD)
            and len(out) < room
        ):
            out.append(member.claim())
            covered.add(to)
        if len(out) < room and self._queue:
            limit = retransmit_limit(self.config, self.size())
            picks = self._pop_queued(room - len(out) + len(covered))
            for index, queued in enumerate(picks):
                node = queued.update.node
                if node not in covered:
                    if len(out) >= room:
                        # Not sent: back in the heap unchanged, with the rest of the picks.
                        for rest in picks[index:]:
                            self._push_queued(rest.update.node, rest.transmits, rest.order)
                        break
                    out.append(queued.update)
                elif node == to:
                    # The buddy claim told the accused, nobody who spreads it: no transmit
                    # spent (else packets to a crashed member, probes and reconnects among
                    # them, use up the budget meant for the survivors).
                    self._push_queued(node, queued.transmits, queued.order)
                    continue
                # Our own LEFT claim, sent above as a priority one, counts as transmitted.
                queued.transmits += 1
                if queued.transmits >= limit:
                    del self._queue[node]
                else:
                    self._push_queued(node, queued.transmits, queued.order)
        return tuple(out)

    def leave(self, now: float) -> list[tuple[str, Message]]:
        """Announce a graceful departure: LEFT at a higher incarnation, sent to several members."""
        self._start(now)
        if self._left:
            return []
        self._incarnation = min(self._incarnation + 1, INCARNATION_MAX)
        self._left = True
        self._probe = None
        self._relays.clear()
        self._enqueue(self._self_claim())
        # Probing stops now, so the LEFT claim needs carriers of its own: pings to as many
        # members as it would be retransmitted to, each packet leading with the claim.
        peers = self.alive()
        count = min(len(peers), retransmit_limit(self.config, self.size() + 1))
        return [(peer, Ping(self._next_seq())) for peer in self._rng.sample(peers, count)]

    def next_wakeup(self) -> float:
        if self._next_probe_s is None:
            return math.inf
        times = [math.inf]
        if self._timers:
            times.append(self._timers[0][0])
        times.extend(relay.deadline_s for relay in self._relays.values())
        if not self._left:
            probe = self._probe
            if probe is None:
                times.append(self._next_probe_s)
            else:
                times.append(probe.end_s if probe.indirect else probe.ack_deadline_s)
            if self._join_pending() and self._join_next_s is not None:
                times.append(self._join_next_s)
        return min(times)

    def on_timer(self, now: float) -> list[tuple[str, Message]]:
        self._start(now)
        out: list[tuple[str, Message]] = []
        self._run_timers(now)
        out.extend(self._expire_relays(now))
        if self._left:
            return out
        out.extend(self._advance_probe(now))
        assert self._next_probe_s is not None
        if self._probe is None and now >= self._next_probe_s:
            scale = self._awareness + 1
            self._next_probe_s = now + self.config.probe_interval_s * scale
            out.extend(self._start_probe(now))
            out.extend(self._peer_exchange())
        if self._join_pending() and self._join_next_s is not None and now >= self._join_next_s:
            out.extend(self._send_joins(now, list(self._seeds)))
        return out

    # -- probing -----------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        if self._next_probe_s is None:
            # A random phase spreads the probes of nodes started together.
            self._next_probe_s = now + self._rng.random() * self.config.probe_interval_s

    def _next_seq(self) -> int:
        # Never 0: drivers use seq 0 for pings that expect no particular ack.
        self._seq = self._seq % _SEQ_WRAP + 1
        return self._seq

    def _next_target(self) -> str | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                node = self._probe_order[self._probe_index]
                self._probe_index += 1
                member = self._members.get(node)
                if member is not None and member.state in _LIVE:
                    return node
            order = sorted(n for n, m in self._members.items() if m.state in _LIVE)
            self._rng.shuffle(order)
            self._probe_order, self._probe_index = order, 0
            if not order:
                return None
        return None

    def _start_probe(self, now: float) -> list[tuple[str, Message]]:
        target = self._next_target()
        if target is None:
            return []
        timeout_s = self.config.probe_timeout_s * (self._awareness + 1)
        seq = self._next_seq()
        self._probe = _Probe(target, seq, now + timeout_s, now + 3 * timeout_s)
        self.stats["probes"] += 1
        return [(target, Ping(seq))]

    def _advance_probe(self, now: float) -> list[tuple[str, Message]]:
        probe = self._probe
        if probe is None:
            return []
        target = self._members.get(probe.target)
        if target is None or target.state not in _LIVE:
            self._probe = None  # learned dead or left meanwhile: nothing left to decide
            return []
        out: list[tuple[str, Message]] = []
        if not probe.indirect and now >= probe.ack_deadline_s:
            probe.indirect = True
            candidates = self._alive_without(probe.target)
            count = min(self.config.indirect_probes, len(candidates))
            probe.relays = tuple(self._rng.sample(candidates, count))
            out.extend((relay, PingReq(probe.seq, probe.target)) for relay in probe.relays)
            self.stats["ping_reqs_sent"] += len(probe.relays)
        if probe.indirect and now >= probe.end_s:
            self._probe = None
            self.stats["probes_failed"] += 1
            if probe.relays:
                self._adjust_awareness(len(probe.relays) - len(probe.nacks))
            else:
                self._adjust_awareness(1)
            self._suspect(now, probe.target)
        return out

    def _on_ack(self, now: float, sender: str, seq: int) -> list[tuple[str, Message]]:
        probe = self._probe
        if probe is not None and seq == probe.seq:
            if sender == probe.target:
                self._probe = None
                if now < probe.ack_deadline_s:
                    self.stats["probes_ok_direct"] += 1
                    self._adjust_awareness(-1)
                else:
                    # Late: the timeout was too short for our current health; no reward.
                    self.stats["probes_ok_late"] += 1
                return []
            if sender in probe.relays:
                self._probe = None
                self.stats["probes_ok_indirect"] += 1
                return []
        relay = self._relays.get(seq)
        if relay is not None and sender == relay.target:
            del self._relays[seq]
            self.stats["relay_acks"] += 1
            return [(relay.requester, Ack(relay.requester_seq))]
        self.stats["acks_stray"] += 1
        return []

    def _on_nack(self, sender: str, seq: int) -> None:
        probe = self._probe
        if probe is not None and seq == probe.seq and sender in probe.relays:
            probe.nacks.add(sender)
        else:
            self.stats["nacks_stray"] += 1

    def _on_ping_req(self, now: float, sender: str, msg: PingReq) -> list[tuple[str, Message]]:
        if self._left:
            return []
        if not _valid_id(msg.target):
            self._reject(f"PingReq from {sender!r}: target {msg.target!r} is not a node id")
            return []
        if msg.target == self.self_id:
            return [(sender, Ack(msg.seq))]
        if len(self._relays) >= RELAYS_MAX:
            self._reject(f"PingReq from {sender!r}: {RELAYS_MAX} relays already running; dropped")
            return []
        for relay in self._relays.values():
            if relay.requester == sender and relay.requester_seq == msg.seq:
                return []  # a duplicate: the first one is still running
        seq = self._next_seq()
        self._relays[seq] = _Relay(sender, msg.seq, msg.target, now + self.config.probe_timeout_s)
        return [(msg.target, Ping(seq))]

    def _expire_relays(self, now: float) -> list[tuple[str, Message]]:
        due = sorted(
            (relay.deadline_s, seq)
            for seq, relay in self._relays.items()
            if relay.deadline_s <= now
        )
        out: list[tuple[str, Message]] = []
        for _, seq in due:
            relay = self._relays.pop(seq)
            out.append((relay.requester, Nack(relay.requester_seq)))
        return out

    def _peer_exchange(self) -> list[tuple[str, Message]]:
        self._periods += 1
        while self._unknown_senders:
            node = next(iter(self._unknown_senders))
            del self._unknown_senders[node]
            if node not in self._members:
                self.stats["peer_exchange_joins"] += 1
                return [(node, Join(self.self_addr))]
        if self._periods >= self._next_pull_period:
            # Pull often while pulls keep teaching us members (a fog that is still forming:
            # piggybacked updates alone take minutes to spread a thousand joins), rarely once
            # the view is stable.
            size = len(self._members)
            growing = size > self._size_at_last_pull
            self._size_at_last_pull = size
            self._next_pull_period = self._periods + (
                PULL_PROBE_PERIODS_GROWING if growing else PULL_PROBE_PERIODS
            )
            peers = self._alive
            if peers:
                self.stats["peer_exchange_pulls"] += 1
                return [(self._rng.choice(peers), Join(self.self_addr))]
        return []

    def _adjust_awareness(self, delta: int) -> None:
        ceiling = max(0, self.config.awareness_max - 1)
        self._awareness = min(ceiling, max(0, self._awareness + delta))

    # -- joining -----------------------------------------------------------------------------

    def _join_pending(self) -> bool:
        return bool(self._seeds) and self._live == 0

    def _send_joins(self, now: float, seeds: list[str]) -> list[tuple[str, Message]]:
        if self._left or not seeds:
            return []
        self._join_next_s = now + self._join_backoff_s
        self._join_backoff_s = min(
            self._join_backoff_s * 2, self.config.probe_interval_s * JOIN_BACKOFF_MULT_MAX
        )
        self.stats["joins_sent"] += len(seeds)
        return [(seed, Join(self.self_addr)) for seed in seeds]

    def _on_join(self, now: float, sender: str, msg: Join) -> list[tuple[str, Message]]:
        if self._left:
            return []
        addr = msg.addr if isinstance(msg.addr, str) and len(msg.addr) <= ADDR_CHARS_MAX else ""
        member = self._members.get(sender)
        if member is None:
            self._apply(
                now, MemberUpdate(sender, addr, MemberState.ALIVE, 0), sender, disseminate=True
            )
        elif addr:
            member.addr = addr  # the sender is the authority on its own address
        return [(sender, Welcome(self._welcome_for(sender)))]

    def _welcome_for(self, joiner: str) -> tuple[MemberUpdate, ...]:
        cap = self.config.welcome_members_max
        out = [self._self_claim()]
        known = self._members.get(joiner)
        if known is not None:
            out.append(known.claim())
        candidates = self._alive_without(joiner)
        count = max(0, min(len(candidates), cap - len(out)))
        out.extend(self._members[n].claim() for n in self._rng.sample(candidates, count))
        return tuple(out[:cap])

    def _alive_without(self, node: str) -> list[str]:
        """ALIVE members but ``node``, sorted (the same list a filter would build, so a
        seeded sample is unchanged); no copy when ``node`` is not among them. Read-only."""
        alive = self._alive
        at = bisect.bisect_left(alive, node)
        if at < len(alive) and alive[at] == node:
            return alive[:at] + alive[at + 1 :]
        return alive

    def _on_welcome(self, now: float, sender: str, msg: Welcome) -> list[tuple[str, Message]]:
        members = msg.members
        if not isinstance(members, tuple | list):
            self._reject(f"Welcome from {sender!r}: members is not a sequence; dropped")
            return []
        cap = self.config.welcome_members_max
        if len(members) > cap:
            self._reject(
                f"Welcome from {sender!r} lists {len(members)} members, more than "
                f"welcome_members_max={cap}; the excess was dropped"
            )
        for update in members[:cap]:
            self._apply(now, update, sender, disseminate=False)
        self._join_backoff_s = self.config.probe_interval_s
        return []

    # -- claims ------------------------------------------------------------------------------

    def _self_claim(self) -> MemberUpdate:
        state = MemberState.LEFT if self._left else MemberState.ALIVE
        return MemberUpdate(self.self_id, self.self_addr, state, self._incarnation)

    def _enqueue(self, update: MemberUpdate) -> None:
        self._order += 1
        self._queue.pop(update.node, None)
        self._queue[update.node] = _Queued(update, 0, self._order)
        self._push_queued(update.node, 0, self._order)

    def _push_queued(self, node: str, transmits: int, order: int) -> None:
        heap = self._queue_heap
        if len(heap) > len(self._queue) + len(self._queue) // 4 + 64:
            # Mostly stale (replaced claims): rebuild from the queue, O(Q) now and then.
            heap[:] = [(q.transmits, -q.order, n) for n, q in self._queue.items()]
            heapq.heapify(heap)
            if self._queue.get(node) is not None:
                return  # the rebuild included this entry already
        heapq.heappush(heap, (transmits, -order, node))

    def _pop_queued(self, count: int) -> list[_Queued]:
        """The ``count`` queued claims sent fewest times, newest first among equals (removed
        from the heap; the caller pushes back the ones that stay queued)."""
        heap, queue = self._queue_heap, self._queue
        out: list[_Queued] = []
        taken: set[str] = set()  # a rebuild may have left a second, identical entry
        while heap and len(out) < count:
            transmits, negative_order, node = heapq.heappop(heap)
            queued = queue.get(node)
            if (
                queued is not None
                and queued.order == -negative_order
                and queued.transmits == transmits
                and node not in taken
            ):
                taken.add(node)
                out.append(queued)
        return out

    def _reject(self, reason: str) -> None:
        self.stats["rejected"] += 1
        self.rejections.append(reason)

    def _apply(self, now: float, update: MemberUpdate, via: str, *, disseminate: bool) -> None:
        problem = _update_problem(update)
        if problem is not None:
            self._reject(f"update from {via!r}: {problem}; dropped")
            return
        member = self._members.get(update.node)
        if (
            member is not None
            and update.incarnation == member.incarnation
            and update.state is member.state
            and update.state is not MemberState.SUSPECT
        ):
            return  # what we hold already: most of every Welcome sample, so tested first
        if update.node == self.self_id:
            self._on_claim_about_self(update)
            return
        if member is None:
            if update.state is not MemberState.ALIVE:
                self.stats["claims_about_unknown"] += 1
                return
            if self.known() >= self.config.members_max:
                self.stats["members_ignored"] += 1
                return
            member = _Member(update.node, update.addr, MemberState.ALIVE, update.incarnation, now)
            self._members[update.node] = member
            self._live += 1
            bisect.insort(self._alive, update.node)
            self._unknown_senders.pop(update.node, None)
            self._insert_probe_target(update.node)
            self._events.append(
                Notify("up", update.node, {"incarnation": update.incarnation, "was": "unknown"})
            )
            if disseminate:
                self._enqueue(update)
            return
        new = (update.incarnation, _RANK[update.state])
        old = (member.incarnation, _RANK[member.state])
        if new <= old:
            if (
                update.state is MemberState.SUSPECT
                and member.state is MemberState.SUSPECT
                and update.incarnation == member.incarnation
                and self._confirm(member, update.origin or via)
                and disseminate
                and update.node not in self._queue
            ):
                # News to us, so maybe to others: pass this originator's claim on, unless a
                # claim about this member is still being sent (our own confirmation, say),
                # which one about the same incarnation would push out of the queue.
                self._enqueue(self._suspect_claim(member, update.origin or via))
            return
        if update.addr and update.incarnation > member.incarnation:
            member.addr = update.addr
        self._transition(now, member, update.state, update.incarnation, update.origin or via)
        if disseminate:
            self._enqueue(member.claim())

    def _transition(
        self, now: float, member: _Member, state: MemberState, incarnation: int, via: str
    ) -> None:
        was = member.state
        was_live = was in _LIVE
        member.state, member.incarnation, member.since_s = state, incarnation, now
        member.suspicion = None
        self._live += int(state in _LIVE) - int(was_live)
        if (state is MemberState.ALIVE) != (was is MemberState.ALIVE):
            if state is MemberState.ALIVE:
                bisect.insort(self._alive, member.node)
            else:
                del self._alive[bisect.bisect_left(self._alive, member.node)]
        self._dead.discard(member.node)
        if state is MemberState.DEAD:
            self._dead.add(member.node)
        if state is MemberState.SUSPECT:
            n = self.size()
            min_s, max_s = suspicion_timeouts(self.config, n)
            expected = suspicion_confirmations(self.config, n)
            deadline = suspicion_deadline(now, min_s, max_s, expected, 0)
            member.suspicion = _Suspicion(now, expected, min_s, max_s, deadline, {via})
            member.origin = via
            self._push_timer(deadline, "suspect", member.node)
            if via != self.self_id and expected and len(self._probe_order) < 2 * len(self._members):
                # Heard, not seen: probe it next, so our own verdict (a confirmation, or
                # nothing) comes within a probe period instead of whenever this round reaches
                # it (up to N periods). It costs one extra probe in this round; the bound
                # keeps a flood of claims from growing the round without end.
                self._probe_order.insert(self._probe_index, member.node)
        elif state in (MemberState.DEAD, MemberState.LEFT):
            self._push_timer(now + self.config.dead_forget_s, "forget", member.node)
        if state is MemberState.ALIVE and not was_live:
            self._insert_probe_target(member.node)
        if state is not was:
            detail: dict[str, object] = {"incarnation": incarnation, "was": was.name.lower()}
            self._events.append(Notify(_EVENT[state], member.node, detail))

    def _confirm(self, member: _Member, via: str) -> bool:
        """Count ``via``'s suspicion of ``member``; True if it was a new, usable confirmation."""
        suspicion = member.suspicion
        if suspicion is None or via in suspicion.confirmers:
            return False
        if len(suspicion.confirmers) - 1 >= suspicion.expected:
            return False
        suspicion.confirmers.add(via)
        self.stats["suspicion_confirmations"] += 1
        deadline = suspicion_deadline(
            suspicion.start_s,
            suspicion.min_s,
            suspicion.max_s,
            suspicion.expected,
            len(suspicion.confirmers) - 1,
        )
        if deadline < suspicion.deadline_s:
            suspicion.deadline_s = deadline
            self._push_timer(deadline, "suspect", member.node)
        return True

    @staticmethod
    def _suspect_claim(member: _Member, origin: str) -> MemberUpdate:
        return MemberUpdate(
            member.node, member.addr, MemberState.SUSPECT, member.incarnation, origin
        )

    def _suspect(self, now: float, node: str) -> None:
        member = self._members.get(node)
        if member is None:
            return
        if member.state is MemberState.ALIVE:
            self.stats["suspicions_raised"] += 1
            self._transition(now, member, MemberState.SUSPECT, member.incarnation, self.self_id)
            self._enqueue(member.claim())
        elif member.state is MemberState.SUSPECT and self._confirm(member, self.self_id):
            # Our own, independent suspicion: others count it only if they hear it.
            self._enqueue(self._suspect_claim(member, self.self_id))

    def _on_claim_about_self(self, update: MemberUpdate) -> None:
        if self._left:
            return  # we are leaving on purpose: nothing to refute
        if update.state is MemberState.ALIVE:
            if update.incarnation > self._incarnation:
                # Someone remembers a later life of ours (we restarted without our old
                # incarnation): outbid it so our own claims win again.
                self._refute(update.incarnation, penalize=False)
            return
        if update.incarnation >= self._incarnation:
            self._refute(update.incarnation, penalize=True)
        elif self.self_id not in self._queue:
            # A stale accusation still circulates: re-announce the incarnation that beats it.
            self._enqueue(self._self_claim())

    def _refute(self, claimed: int, *, penalize: bool) -> None:
        incarnation = min(claimed + 1, INCARNATION_MAX)
        if incarnation <= self._incarnation:
            self._reject(f"a claim about us at incarnation {claimed} cannot be outbid")
            return
        self._incarnation = incarnation
        self.stats["refutations"] += 1
        if penalize:
            # Being accused is a hint that we are the slow one (Lifeguard).
            self._adjust_awareness(1)
        self._enqueue(self._self_claim())

    def _insert_probe_target(self, node: str) -> None:
        # Anywhere in the rest of this round, so a new member is probed within the round
        # without always going last.
        position = self._rng.randint(self._probe_index, len(self._probe_order))
        self._probe_order.insert(position, node)

    # -- timers ------------------------------------------------------------------------------

    def _push_timer(self, at_s: float, kind: str, node: str) -> None:
        self._order += 1
        heapq.heappush(self._timers, (at_s, self._order, kind, node))

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, node = heapq.heappop(self._timers)
            member = self._members.get(node)
            if member is None:
                continue
            if kind == "suspect":
                suspicion = member.suspicion
                if (
                    member.state is MemberState.SUSPECT
                    and suspicion is not None
                    and suspicion.deadline_s <= now
                ):
                    self.stats["declared_dead"] += 1
                    self._transition(
                        now, member, MemberState.DEAD, member.incarnation, self.self_id
                    )
                    self._enqueue(member.claim())
            elif (
                member.state in (MemberState.DEAD, MemberState.LEFT)
                and member.since_s + self.config.dead_forget_s <= now
            ):
                del self._members[node]
                self._dead.discard(node)
                self.stats["forgotten"] += 1
