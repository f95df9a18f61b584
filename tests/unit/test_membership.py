"""Membership (SWIM + Lifeguard) on a small deterministic fake network, plus unit checks.

``FakeNet`` is a virtual clock and a message queue: every link has a delay, links can be
blocked, a node's outbound traffic can be slowed, nodes can crash. Nothing depends on wall time
or global randomness, so every run of a test is the same run.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest

from node.gossip.config import GossipConfig
from node.gossip.membership import (
    INCARNATION_MAX,
    PULL_PROBE_PERIODS,
    PULL_PROBE_PERIODS_GROWING,
    RELAYS_MAX,
    Membership,
    retransmit_limit,
    suspicion_confirmations,
    suspicion_deadline,
    suspicion_timeouts,
)
from node.gossip.messages import (
    Ack,
    Gossip,
    Join,
    MemberState,
    MemberUpdate,
    Message,
    Nack,
    Notify,
    Packet,
    Ping,
    PingReq,
    Welcome,
)
from node.gossip.suspicion import suspicion_timeout_s

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
MembershipMessage = Ping | Ack | PingReq | Nack | Join | Welcome


@dataclass
class FakeNet:
    config: GossipConfig
    seed: int = 1
    delay_s: float = 0.01
    budget: int = 8
    now: float = 0.0
    nodes: dict[str, Membership] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)
    blocked: set[tuple[str, str]] = field(default_factory=set)
    outbound_delay_s: dict[str, float] = field(default_factory=dict)
    events: list[tuple[float, str, Notify]] = field(default_factory=list)
    health_max: dict[str, int] = field(default_factory=dict)
    _queue: list[tuple[float, int, str, Packet]] = field(default_factory=list)
    _order: int = 0

    def add(self, node: str, config: GossipConfig | None = None) -> Membership:
        rng = random.Random(self.seed * 1_000 + len(self.nodes))
        member = Membership(node, f"addr-{node}", config or self.config, rng)
        self.nodes[node] = member
        return member

    def send(self, src: str, outputs: list[tuple[str, Message]]) -> None:
        member = self.nodes[src]
        for to, msg in outputs:
            packet = Packet(src, (msg,), member.take_updates(to, self.budget))
            if (src, to) in self.blocked or to not in self.nodes:
                continue
            delay = self.outbound_delay_s.get(src, self.delay_s)
            self._order += 1
            heapq.heappush(self._queue, (self.now + delay, self._order, to, packet))

    def crash(self, node: str) -> None:
        self.crashed.add(node)

    def isolate(self, node: str, on: bool) -> None:
        for other in self.nodes:
            for link in ((node, other), (other, node)):
                if on:
                    self.blocked.add(link)
                else:
                    self.blocked.discard(link)

    def run_until(self, end_s: float) -> None:
        for _ in range(1_000_000):
            live = [n for n in sorted(self.nodes) if n not in self.crashed]
            timer_s = min((self.nodes[n].next_wakeup() for n in live), default=math.inf)
            packet_s = self._queue[0][0] if self._queue else math.inf
            at = min(timer_s, packet_s)
            if at > end_s:
                self.now = end_s
                return
            self.now = max(self.now, at)
            if packet_s <= timer_s:
                _, _, to, packet = heapq.heappop(self._queue)
                if to not in self.crashed:
                    self._deliver(to, packet)
            else:
                for node in live:
                    if self.nodes[node].next_wakeup() <= self.now:
                        self.send(node, self.nodes[node].on_timer(self.now))
            self._observe()
        raise AssertionError("the fake network did not reach its end time")

    def _deliver(self, to: str, packet: Packet) -> None:
        member = self.nodes[to]
        member.heard_from(self.now, packet.sender)
        member.on_updates(self.now, packet.sender, packet.updates)
        for msg in packet.messages:
            assert isinstance(msg, MembershipMessage)
            self.send(to, member.on_message(self.now, packet.sender, msg))

    def _observe(self) -> None:
        for node, member in self.nodes.items():
            self.events.extend((self.now, node, event) for event in member.drain_events())
            self.health_max[node] = max(self.health_max.get(node, 0), member.local_health)

    def events_about(self, subject: str, kind: str) -> list[tuple[float, str]]:
        return [(t, obs) for t, obs, e in self.events if e.node == subject and e.event == kind]


def cluster(n: int, config: GossipConfig, seed: int = 1, settle_s: float = 20.0) -> FakeNet:
    """n nodes, all joining through n00, staggered by 100 ms; run until ``settle_s``."""
    net = FakeNet(config, seed)
    names = [f"n{i:02d}" for i in range(n)]
    for name in names:
        net.add(name)
    net.send(names[0], net.nodes[names[0]].join(0.0, []))
    for i, name in enumerate(names[1:], start=1):
        net.run_until(0.1 * i)
        net.send(name, net.nodes[name].join(net.now, [names[0]]))
    net.run_until(settle_s)
    return net


CONFIG = GossipConfig()


# -- the fake network ------------------------------------------------------------------------


def test_ten_nodes_join_through_one_seed_and_learn_everyone() -> None:
    net = cluster(10, CONFIG)
    names = sorted(net.nodes)
    for name, member in net.nodes.items():
        assert member.alive() == [n for n in names if n != name], name
        assert member.size() == 10
    assert [e for _, _, e in net.events if e.event != "up"] == []


def test_a_crashed_node_is_suspected_then_declared_dead_by_everyone_in_time() -> None:
    net = cluster(10, CONFIG)
    crash_s = net.now
    net.crash("n05")
    n = 10
    # Round-robin: every survivor probes n05 within two rounds of n-1 probes; a failed probe
    # lasts 3 x timeout; the suspicion may have to run its full max; then dissemination.
    probe_s = max(CONFIG.probe_interval_s, 3 * CONFIG.probe_timeout_s)
    bound_s = 2 * (n - 1) * probe_s + suspicion_timeouts(CONFIG, n)[1] + 5 * probe_s
    net.run_until(crash_s + bound_s)
    suspects = net.events_about("n05", "suspect")
    deads = net.events_about("n05", "dead")
    survivors = sorted(set(net.nodes) - {"n05"})
    assert sorted(obs for _, obs in deads) == survivors  # each declares it dead exactly once
    assert min(t for t, _ in suspects) < min(t for t, _ in deads)
    # Lifeguard: the survivors' own suspicions reach each other as confirmations, so nobody
    # waits the 11.4 s that a lone confirmation leaves; a confirmation may arrive up to one
    # probe (3 x timeout) after min_s.
    min_s, _ = suspicion_timeouts(CONFIG, n)
    for name in survivors:
        own = min(t for t, obs in suspects if obs == name)
        dead_s = min(t for t, obs in deads if obs == name)
        assert dead_s - own <= min_s + 3 * CONFIG.probe_timeout_s, name
    for name in survivors:
        assert net.nodes[name].state_of("n05") is DEAD
        assert net.nodes[name].dead() == ["n05"]
    # No collateral damage: nobody else was even suspected.
    assert {e.node for _, _, e in net.events if e.event != "up"} == {"n05"}


def test_a_briefly_partitioned_node_refutes_suspicion_and_stays_alive() -> None:
    net = cluster(10, CONFIG)
    start_s = net.now
    net.isolate("n03", True)  # shorter than the minimum suspicion timeout (4 s)
    net.run_until(start_s + 3.5)
    net.isolate("n03", False)
    net.run_until(start_s + 60.0)
    assert net.events_about("n03", "suspect")  # the partition was noticed...
    assert [e for _, _, e in net.events if e.event == "dead"] == []  # ...and refuted in time
    assert net.nodes["n03"].incarnation >= 1
    for name, member in net.nodes.items():
        assert len(member.alive()) == 9, name


def test_indirect_probes_save_a_member_whose_direct_link_is_broken() -> None:
    def run(config: GossipConfig) -> FakeNet:
        net = cluster(6, config, seed=3)
        net.blocked |= {("n01", "n02"), ("n02", "n01")}
        net.run_until(net.now + 60.0)
        return net

    net = run(CONFIG)
    assert net.nodes["n01"].stats["probes_ok_indirect"] >= 1
    assert net.nodes["n02"].stats["probes_ok_indirect"] >= 1
    assert [e for _, _, e in net.events if e.event != "up"] == []
    # Without relays the same broken link produces accusations (refuted, but real).
    control = run(replace(CONFIG, indirect_probes=0))
    assert control.events_about("n02", "suspect") or control.events_about("n01", "suspect")


def test_graceful_leave_is_left_not_dead() -> None:
    net = cluster(10, CONFIG)
    net.send("n04", net.nodes["n04"].leave(net.now))
    net.run_until(net.now + 1.0)
    net.crash("n04")
    net.run_until(net.now + 30.0)
    others = sorted(set(net.nodes) - {"n04"})
    assert sorted(obs for _, obs in net.events_about("n04", "left")) == others
    assert net.events_about("n04", "dead") == []
    assert net.events_about("n04", "suspect") == []
    for name in others:
        assert net.nodes[name].state_of("n04") is LEFT
        assert "n04" not in net.nodes[name].alive()
    assert net.nodes["n04"].state_of("n04") is LEFT


def test_leave_then_forget_after_dead_forget_s() -> None:
    config = replace(CONFIG, dead_forget_s=5.0)
    net = cluster(4, config)
    net.send("n01", net.nodes["n01"].leave(net.now))
    net.run_until(net.now + 1.0)
    net.crash("n01")
    net.run_until(net.now + 10.0)
    for name in ("n00", "n02", "n03"):
        assert net.nodes[name].state_of("n01") is None
        assert net.nodes[name].known() == 3


def test_a_lost_join_is_retried() -> None:
    net = FakeNet(CONFIG)
    seed, joiner = net.add("n00"), net.add("n01")
    net.send("n00", seed.join(0.0, []))
    net.blocked.add(("n01", "n00"))
    net.send("n01", joiner.join(0.0, ["n00"]))
    net.run_until(0.5)
    assert seed.alive() == []
    net.blocked.clear()
    net.run_until(10.0)
    assert seed.alive() == ["n01"]
    assert joiner.alive() == ["n00"]
    assert joiner.stats["joins_sent"] >= 2


def test_members_missing_from_a_small_welcome_are_learned_by_peer_exchange() -> None:
    # A three-entry Welcome carries the seed, the joiner itself and one random member, and
    # joins 15 s apart let every earlier ALIVE claim stop circulating: members must learn the
    # rest from pulls and from probing newcomers, who answer an unknown prober with a Join.
    # (With two entries a pull teaches nothing, and two members that never heard of each
    # other never probe each other either.)
    net = FakeNet(replace(CONFIG, welcome_members_max=3))
    names = [f"n{i:02d}" for i in range(6)]
    for name in names:
        net.add(name)
    net.send("n00", net.nodes["n00"].join(0.0, []))
    for i, name in enumerate(names[1:], start=1):
        net.run_until(15.0 * i)
        net.send(name, net.nodes[name].join(net.now, ["n00"]))
    net.run_until(15.0 * len(names) + 60.0)
    for name, member in net.nodes.items():
        assert len(member.alive()) == 5, name
    assert sum(m.stats["peer_exchange_joins"] for m in net.nodes.values()) > 0


def test_a_restarted_node_remembered_dead_rejoins_with_a_higher_incarnation() -> None:
    net = cluster(5, CONFIG)
    net.crash("n02")
    net.run_until(net.now + 30.0)
    assert net.nodes["n00"].state_of("n02") is DEAD
    net.crashed.discard("n02")
    fresh = Membership("n02", "addr-n02-new", CONFIG, random.Random(77))  # incarnation lost
    net.nodes["n02"] = fresh
    net.send("n02", fresh.join(net.now, ["n00"]))
    net.run_until(net.now + 20.0)
    assert fresh.incarnation >= 1
    assert len(fresh.alive()) == 4
    for name, member in net.nodes.items():
        if name != "n02":
            assert member.state_of("n02") is ALIVE, name
            assert member.addr_of("n02") == "addr-n02-new", name


def lifeguard_run(awareness_max: int) -> tuple[int, int, int]:
    """(suspicions n07 raised, suspicions of others anywhere, n07's peak local health)."""
    net = cluster(8, replace(CONFIG, awareness_max=awareness_max), seed=5, settle_s=15.0)
    net.outbound_delay_s["n07"] = 2.0  # a starved node: everything it sends is 2 s late
    net.run_until(net.now + 60.0)
    false = [e for _, _, e in net.events if e.event == "suspect" and e.node != "n07"]
    return net.nodes["n07"].stats["suspicions_raised"], len(false), net.health_max["n07"]


def test_lifeguard_a_slow_node_raises_local_health_and_accuses_less() -> None:
    raised_aware, false_aware, health_aware = lifeguard_run(awareness_max=CONFIG.awareness_max)
    raised_blind, false_blind, health_blind = lifeguard_run(awareness_max=0)
    assert health_blind == 0
    assert health_aware > 0
    assert raised_blind > 0
    assert raised_aware * 2 <= raised_blind
    assert false_aware * 2 <= false_blind


def test_the_member_table_is_bounded() -> None:
    config = replace(CONFIG, members_max=5)
    net = cluster(10, config)
    for member in net.nodes.values():
        assert member.known() <= 5
        assert len(member.alive()) <= 4
    assert net.nodes["n00"].stats["members_ignored"] > 0


# -- one node, fed by hand -------------------------------------------------------------------


def single(config: GossipConfig = CONFIG, incarnation: int = 0) -> Membership:
    return Membership("me", "addr-me", config, random.Random(0), incarnation)


def with_peer(member: Membership, peer: str = "p", incarnation: int = 0) -> None:
    member.on_updates(0.0, peer, [MemberUpdate(peer, f"addr-{peer}", ALIVE, incarnation)])


def test_a_higher_dead_claim_about_us_is_refuted() -> None:
    member = single(incarnation=3)
    member.on_updates(1.0, "liar", [MemberUpdate("me", "addr-me", DEAD, 7)])
    assert member.incarnation == 8
    assert member.state_of("me") is ALIVE
    assert member.local_health == 1
    assert MemberUpdate("me", "addr-me", ALIVE, 8) in member.take_updates("x", 8)


def test_a_stale_accusation_reannounces_without_a_bump() -> None:
    member = single(incarnation=5)
    member.take_updates("x", 8)  # let the self claim be sent a few times
    member.on_updates(1.0, "p", [MemberUpdate("me", "addr-me", SUSPECT, 2)])
    assert member.incarnation == 5
    assert member.local_health == 0
    assert MemberUpdate("me", "addr-me", ALIVE, 5) in member.take_updates("x", 8)


def test_after_leaving_accusations_are_not_refuted() -> None:
    member = single()
    with_peer(member)
    member.leave(1.0)
    member.on_updates(2.0, "p", [MemberUpdate("me", "addr-me", DEAD, 9)])
    assert member.state_of("me") is LEFT
    assert member.incarnation == 1
    assert member.take_updates("p", 1) == (MemberUpdate("me", "addr-me", LEFT, 1),)


@pytest.mark.parametrize(
    ("update", "problem"),
    [
        (MemberUpdate("p", "a", ALIVE, INCARNATION_MAX + 1), "outside 0..2**62"),
        (MemberUpdate("p", "a", DEAD, -1), "outside 0..2**62"),
        (MemberUpdate("p", "a", ALIVE, True), "not an integer"),
        (MemberUpdate("p", "a", ALIVE, 1.5), "not an integer"),  # type: ignore[arg-type]
        (MemberUpdate("p", "a", 7, 1), "is not a MemberState"),  # type: ignore[arg-type]
        (MemberUpdate("", "a", ALIVE, 1), "node id"),
        (MemberUpdate("p" * 300, "a", ALIVE, 1), "node id"),
        (MemberUpdate("p", 12, ALIVE, 1), "addr"),  # type: ignore[arg-type]
        ("p alive", "not a MemberUpdate"),
    ],
)
def test_malformed_or_absurd_claims_are_dropped_and_change_nothing(
    update: MemberUpdate, problem: str
) -> None:
    member = single()
    with_peer(member, "p", incarnation=4)
    member.on_updates(1.0, "q", [update])
    assert member.state_of("p") is ALIVE
    assert member.incarnation_of("p") == 4
    assert member.known() == 2
    assert member.stats["rejected"] == 1
    assert problem in member.rejections[-1]


def test_an_absurd_claim_about_us_does_not_move_our_incarnation() -> None:
    member = single()
    member.on_updates(1.0, "q", [MemberUpdate("me", "addr-me", DEAD, INCARNATION_MAX + 5)])
    assert member.incarnation == 0
    assert member.stats["refutations"] == 0


def test_accusations_about_unknown_members_are_ignored() -> None:
    member = single()
    member.on_updates(1.0, "q", [MemberUpdate("ghost", "a", DEAD, 3)])
    assert member.state_of("ghost") is None


def test_precedence_incarnation_first_then_state() -> None:
    member = single()
    with_peer(member, "p", incarnation=1)
    steps = [
        (SUSPECT, 0, ALIVE, 1),  # older incarnation: ignored
        (SUSPECT, 1, SUSPECT, 1),
        (ALIVE, 1, SUSPECT, 1),  # same incarnation: SUSPECT beats ALIVE
        (ALIVE, 2, ALIVE, 2),  # refutation
        (DEAD, 2, DEAD, 2),
        (SUSPECT, 2, DEAD, 2),
        (LEFT, 2, DEAD, 2),  # DEAD and LEFT rank the same: the first one stays
        (ALIVE, 2, DEAD, 2),
        (ALIVE, 3, ALIVE, 3),  # a rejoin with a higher incarnation
        (LEFT, 4, LEFT, 4),
    ]
    for state, inc, want_state, want_inc in steps:
        member.on_updates(1.0, "q", [MemberUpdate("p", "addr-p", state, inc)])
        assert (member.state_of("p"), member.incarnation_of("p")) == (want_state, want_inc), (
            state,
            inc,
        )


def test_unknown_senders_ack_and_stray_nack_change_nothing() -> None:
    member = single()
    with_peer(member)
    assert member.on_message(1.0, "stranger", Ack(12345)) == []
    assert member.on_message(1.0, "p", Nack(99)) == []
    assert member.on_message(1.0, "p", Ack(-1)) == []
    assert member.stats["acks_stray"] == 1
    assert member.stats["nacks_stray"] == 1
    assert member.stats["rejected"] == 1
    assert member.state_of("stranger") is None
    assert member.local_health == 0


def test_an_ack_from_the_wrong_node_does_not_complete_a_probe() -> None:
    member = single(replace(CONFIG, indirect_probes=0))
    with_peer(member, "p")
    out = member.on_timer(member.next_wakeup())
    assert len(out) == 1
    to, ping = out[0]
    assert (to, type(ping)) == ("p", Ping)
    assert isinstance(ping, Ping)
    member.on_message(0.1, "impostor", Ack(ping.seq))
    member.on_timer(member.next_wakeup())  # direct timeout: no relays, so straight to the end
    member.on_timer(member.next_wakeup())
    assert member.state_of("p") is SUSPECT
    assert member.local_health == 1


def test_a_prompt_direct_ack_lowers_local_health() -> None:
    member = single(replace(CONFIG, indirect_probes=0))
    with_peer(member, "p")
    member._adjust_awareness(3)
    start = member.next_wakeup()
    [(_, ping)] = member.on_timer(start)
    assert isinstance(ping, Ping)
    member.on_message(start + 0.1, "p", Ack(ping.seq))
    assert member.local_health == 2
    assert member.stats["probes_ok_direct"] == 1


def test_awareness_max_zero_disables_local_health() -> None:
    member = single(replace(CONFIG, awareness_max=0))
    member.on_updates(1.0, "q", [MemberUpdate("me", "addr-me", SUSPECT, 0)])
    assert member.incarnation == 1
    assert member.local_health == 0


def test_relays_forward_acks_and_nack_on_timeout_and_are_bounded() -> None:
    relay = single()
    [(to, ping)] = relay.on_message(1.0, "asker", PingReq(41, "target"))
    assert to == "target"
    assert isinstance(ping, Ping)
    assert relay.on_message(1.1, "target", Ack(ping.seq)) == [("asker", Ack(41))]
    relay.on_message(2.0, "asker", PingReq(42, "target"))
    assert relay.on_timer(2.0 + CONFIG.probe_timeout_s) == [("asker", Nack(42))]
    for seq in range(RELAYS_MAX + 5):
        relay.on_message(3.0, "asker", PingReq(1000 + seq, "target"))
    assert len(relay._relays) == RELAYS_MAX
    assert relay.stats["rejected"] == 5


def test_a_welcome_is_truncated_to_welcome_members_max() -> None:
    config = replace(CONFIG, welcome_members_max=4)
    member = single(config)
    huge = tuple(MemberUpdate(f"m{i}", "a", ALIVE, 0) for i in range(10))
    assert member.on_message(1.0, "seed", Welcome(huge)) == []
    assert member.known() == 5
    assert "welcome_members_max=4" in member.rejections[-1]


def test_join_adds_the_joiner_and_welcomes_it_with_a_sample() -> None:
    config = replace(CONFIG, welcome_members_max=3)
    seed = single(config)
    for i in range(5):
        with_peer(seed, f"m{i}")
    [(to, welcome)] = seed.on_message(1.0, "new", Join("addr-new"))
    assert to == "new"
    assert isinstance(welcome, Welcome)
    assert welcome.members[0] == MemberUpdate("me", "addr-me", ALIVE, 0)
    assert welcome.members[1] == MemberUpdate("new", "addr-new", ALIVE, 0)
    assert len(welcome.members) == 3
    assert seed.addr_of("new") == "addr-new"
    assert MemberUpdate("new", "addr-new", ALIVE, 0) in seed.take_updates("m0", 16)


def test_take_updates_orders_by_fewest_sends_then_newest_and_stops_at_the_limit() -> None:
    member = single()
    sent = Counter(u.node for u in member.take_updates("x", 1))  # our own ALIVE, once
    for name in ("a", "b", "c"):
        with_peer(member, name)
    first = member.take_updates("x", 2)
    assert [u.node for u in first] == ["c", "b"]
    second = member.take_updates("x", 2)
    assert [u.node for u in second] == ["a", "c"]  # a: never sent; then the newest of the rest
    sent.update(u.node for u in (*first, *second))
    while batch := member.take_updates("x", 8):
        sent.update(u.node for u in batch)
    limit = retransmit_limit(CONFIG, member.size())
    assert sent == {"me": limit, "a": limit, "b": limit, "c": limit}
    assert member.take_updates("x", 0) == ()


def test_the_buddy_claim_leads_a_packet_to_the_suspect() -> None:
    member = single()
    with_peer(member, "p")
    with_peer(member, "q")
    member.on_updates(1.0, "q", [MemberUpdate("p", "addr-p", SUSPECT, 0)])
    for _ in range(20):
        member.take_updates("x", 8)
    assert member.take_updates("p", 1) == (MemberUpdate("p", "addr-p", SUSPECT, 0, "q"),)
    assert member.take_updates("q", 8) == ()


def test_suspicion_timeout_shrinks_with_confirmations_to_the_minimum() -> None:
    n = 10
    min_s, max_s = suspicion_timeouts(CONFIG, n)
    k = suspicion_confirmations(CONFIG, n)
    assert (min_s, max_s, k) == (4.0, 24.0, 2)
    deadlines = [suspicion_deadline(0.0, min_s, max_s, k, c) for c in range(k + 1)]
    assert deadlines[0] == max_s
    assert deadlines[-1] == min_s
    assert deadlines == sorted(deadlines, reverse=True)
    assert suspicion_confirmations(CONFIG, 3) == 0
    assert suspicion_deadline(0.0, min_s, max_s, 0, 0) == min_s


def test_a_suspect_is_declared_dead_at_its_deadline() -> None:
    member = single()
    for name in ("p", "q", "r", "s"):
        with_peer(member, name)
    member.on_updates(10.0, "q", [MemberUpdate("p", "addr-p", SUSPECT, 0)])
    n = member.size()
    min_s, max_s = suspicion_timeouts(CONFIG, n)
    k = suspicion_confirmations(CONFIG, n)
    member.on_updates(11.0, "r", [MemberUpdate("p", "addr-p", SUSPECT, 0)])
    deadline = suspicion_deadline(10.0, min_s, max_s, k, 1)
    member.on_timer(deadline - 0.01)
    assert member.state_of("p") is SUSPECT
    member.on_timer(deadline)
    assert member.state_of("p") is DEAD
    assert [e.event for e in member.drain_events() if e.node == "p"] == ["up", "suspect", "dead"]


def test_programming_errors_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="incarnation must be in"):
        single(incarnation=-1)
    with pytest.raises(ValueError, match="probe_interval_s must be > 0"):
        single(replace(CONFIG, probe_interval_s=0.0))
    with pytest.raises(ValueError, match="self_id"):
        Membership("", "a", CONFIG, random.Random(0))
    member = single()
    with pytest.raises(ValueError, match="budget must be >= 0"):
        member.take_updates("x", -1)
    with pytest.raises(TypeError, match="route other messages elsewhere"):
        member.on_message(1.0, "p", Gossip(()))  # type: ignore[arg-type]


def test_an_unknown_sender_gets_a_peer_exchange_join() -> None:
    member = single()
    member.heard_from(0.0, "stranger")
    out = member.on_timer(member.next_wakeup())
    assert ("stranger", Join("addr-me")) in out


def test_every_pull_period_a_random_member_is_asked_for_a_sample() -> None:
    member = single()
    with_peer(member, "p")
    joins = []
    for _ in range(PULL_PROBE_PERIODS * 3):
        now = member.next_wakeup()
        out = member.on_timer(now)
        joins += [to for to, msg in out if isinstance(msg, Join)]
        for to, msg in out:
            if isinstance(msg, Ping):
                member.on_message(now, to, Ack(msg.seq))
    # The view grew at the first pull (from nothing to "p"), so the next comes soon; after
    # that the view is stable and pulls settle to one every PULL_PROBE_PERIODS.
    first = PULL_PROBE_PERIODS_GROWING
    expected = 2 + (PULL_PROBE_PERIODS * 3 - 2 * first) // PULL_PROBE_PERIODS
    assert joins == ["p"] * expected


def test_a_seeded_run_is_reproducible() -> None:
    def trace() -> list[tuple[float, str, str, str]]:
        net = cluster(6, CONFIG, seed=9, settle_s=10.0)
        net.crash("n02")
        net.run_until(40.0)
        return [(t, obs, e.event, e.node) for t, obs, e in net.events]

    assert trace() == trace()


# -- Lifeguard's confirmations (D24) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("confirmations", "expected", "min_s", "max_s", "timeout_s"),
    [
        (0, 2, 4.0, 24.0, 24.0),  # nobody confirmed: the full max
        (1, 2, 4.0, 24.0, 24.0 - 20.0 * math.log(2) / math.log(3)),  # 11.38 s
        (2, 2, 4.0, 24.0, 4.0),  # all expected: the min
        (7, 2, 4.0, 24.0, 4.0),  # more than expected change nothing
        (0, 0, 4.0, 24.0, 4.0),  # a cluster too small to confirm: the min at once
        (1, 4, 5.2, 31.2, 31.2 - 26.0 * math.log(2) / math.log(5)),
        (3, 4, 5.2, 31.2, 31.2 - 26.0 * math.log(4) / math.log(5)),
        (3, 3, 4.0, 4.0, 4.0),  # suspicion_max_mult = 1
    ],
)
def test_suspicion_timeout_table(
    confirmations: int, expected: int, min_s: float, max_s: float, timeout_s: float
) -> None:
    assert suspicion_timeout_s(confirmations, expected, min_s, max_s) == pytest.approx(timeout_s)
    assert suspicion_deadline(100.0, min_s, max_s, expected, confirmations) == pytest.approx(
        100.0 + timeout_s
    )


@pytest.mark.parametrize(
    ("confirmations", "expected", "min_s", "max_s"),
    [(-1, 2, 4.0, 24.0), (0, -1, 4.0, 24.0), (0, 2, 24.0, 4.0), (0, 2, -1.0, 4.0)],
)
def test_suspicion_timeout_refuses_bad_arguments(
    confirmations: int, expected: int, min_s: float, max_s: float
) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        suspicion_timeout_s(confirmations, expected, min_s, max_s)


def _suspecting(peers: tuple[str, ...] = ("p", "q", "r", "s")) -> Membership:
    """``me`` with four peers, having heard from q that p is suspect (origin q)."""
    member = single()
    for name in peers:
        with_peer(member, name)
    member.on_updates(1.0, "q", [MemberUpdate("p", "addr-p", SUSPECT, 0, "q")])
    while member.take_updates("x", 16):
        pass  # drain the queue, as packets to others would
    return member


def _first_probe_fails(member: Membership, start_s: float) -> str:
    """Run ``member``'s timers from ``start_s`` until its first probe fails (nobody answers);
    the target of that probe."""
    now, pinged = start_s, []
    for _ in range(100):
        pinged += [to for to, msg in member.on_timer(now) if isinstance(msg, Ping)]
        if member.stats["probes_failed"]:
            return pinged[0]
        now = member.next_wakeup()
    raise AssertionError("the probe never failed")


def test_our_own_failed_probe_of_a_suspect_is_counted_and_gossiped_as_ours() -> None:
    member = _suspecting()
    # Hearing the suspicion made p our next probe target.
    assert _first_probe_fails(member, 1.0) == "p"
    assert member.stats["suspicion_confirmations"] == 1
    assert member.take_updates("x", 16) == (MemberUpdate("p", "addr-p", SUSPECT, 0, "me"),)


def test_a_suspicion_from_a_new_originator_is_counted_once_and_passed_on() -> None:
    member = _suspecting()
    n = member.size()
    min_s, max_s = suspicion_timeouts(CONFIG, n)
    k = suspicion_confirmations(CONFIG, n)
    claim_r = MemberUpdate("p", "addr-p", SUSPECT, 0, "r")
    member.on_updates(1.5, "s", [claim_r])  # r's suspicion, relayed by s
    member.on_updates(1.6, "q", [claim_r])  # the same one again, via q: not independent
    member.on_updates(1.7, "r", [MemberUpdate("p", "addr-p", SUSPECT, 0, "q")])  # q's, again
    assert member.stats["suspicion_confirmations"] == 1
    assert member.take_updates("x", 16) == (claim_r,)
    deadline_s = suspicion_deadline(1.0, min_s, max_s, k, 1)
    member.on_timer(deadline_s - 0.01)
    assert member.state_of("p") is SUSPECT
    member.on_timer(deadline_s)
    assert member.state_of("p") is DEAD


def test_confirmations_stop_being_passed_on_once_the_timer_is_at_its_minimum() -> None:
    member = _suspecting(("p", "q", "r", "s", "t"))
    k = suspicion_confirmations(CONFIG, member.size())
    assert k == 2
    member.on_updates(1.5, "r", [MemberUpdate("p", "addr-p", SUSPECT, 0, "r")])
    member.take_updates("x", 16)  # r's claim goes out...
    member.on_updates(1.6, "s", [MemberUpdate("p", "addr-p", SUSPECT, 0, "s")])
    assert member.stats["suspicion_confirmations"] == k
    while member.take_updates("x", 16):
        pass
    member.on_updates(1.7, "t", [MemberUpdate("p", "addr-p", SUSPECT, 0, "t")])
    assert member.stats["suspicion_confirmations"] == k  # ...the timer is at min already
    assert member.take_updates("x", 16) == ()  # so t's claim is news to nobody it helps


def test_a_buddy_claim_to_the_suspect_spends_no_retransmission() -> None:
    member = _suspecting()
    member.on_updates(1.5, "r", [MemberUpdate("p", "addr-p", SUSPECT, 0, "r")])
    limit = retransmit_limit(CONFIG, member.size())
    for _ in range(3 * limit):  # packets to the suspect itself (probes of a crashed node)
        assert member.take_updates("p", 16)[0].node == "p"
    sent = [u for _ in range(2 * limit) for u in member.take_updates("x", 16)]
    assert sent == [MemberUpdate("p", "addr-p", SUSPECT, 0, "r")] * limit
