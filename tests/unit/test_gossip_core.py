"""The gossip core over a fake, deterministic link (no simulator, no sockets).

``Net`` moves packets between cores through the real wire codec, with a fixed one-way delay,
and applies delivered ops to each node's ``State`` (verifying them, as the real node does).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Iterable

from node.gossip import wire
from node.gossip.config import GossipConfig
from node.gossip.core import GossipCore
from node.gossip.messages import Attach, Deliver, Effect, Gossip, IHave, Packet, Send, Sync
from node.ledger.digest import OpDigest
from node.ledger.op import Op, OpRejected, decode_op
from node.ledger.state import State
from tests.helpers import NET, T0_MS, op, seeded_keys

USERS = seeded_keys(4, seed=21)
CONFIG = GossipConfig.lan()


class MemLog:
    def __init__(self) -> None:
        self.state = State(NET)
        self.wire: dict[bytes, tuple[bytes, bytes]] = {}

    @property
    def digest(self) -> OpDigest:
        return self.state.digest

    def has(self, op_id: bytes) -> bool:
        return op_id in self.state.applied

    def get_wire(self, ids: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
        return [self.wire[i] for i in ids if i in self.wire]

    def add(self, made: Op) -> bool:
        if self.state.apply(made):
            self.wire[made.id] = (made.body, made.sig)
            return True
        return False


class Net:
    def __init__(
        self, size: int, *, delay_s: float = 0.05, seed: int = 1, config: GossipConfig = CONFIG
    ) -> None:
        rng = random.Random(seed)
        self.ids = [f"n{i:02d}" for i in range(size)]
        self.logs = {n: MemLog() for n in self.ids}
        self.cores = {
            n: GossipCore(n, n, config, random.Random(rng.random()), self.logs[n]) for n in self.ids
        }
        self.delay_s = delay_s
        self.now = 0.0
        self.queue: list[tuple[float, int, str, bytes | None]] = []
        self.seq = 0
        self.sent: list[tuple[float, str, Packet]] = []
        self.drop: Callable[[str, Packet], bool] = lambda to, packet: False
        self.arrivals: dict[tuple[str, bytes], float] = {}
        self.rejected: list[str] = []
        for i, n in enumerate(self.ids):
            self.handle(n, self.cores[n].start(0.0, [self.ids[0]] if i else []))

    def push(self, at: float, node: str, data: bytes | None) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, node, data))

    def handle(self, node: str, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.sent.append((self.now, node, effect.packet))
                if not self.drop(effect.to, effect.packet):
                    self.push(self.now + self.delay_s, effect.to, wire.encode(effect.packet))
            elif isinstance(effect, Deliver):
                accepted = []
                for body, sig in effect.ops:
                    try:
                        made = decode_op(body, sig, NET)
                        State.check_op(made)
                    except OpRejected as why:
                        self.rejected.append(why.code)
                        continue
                    if self.logs[node].add(made):
                        accepted.append(made)
                        self.arrivals[(node, made.id)] = self.now
                self.handle(
                    node, self.cores[node].on_ops_accepted(self.now, accepted, effect.sender)
                )
        self.push(self.cores[node].next_wakeup(), node, None)

    def run_until(self, t: float) -> None:
        while self.queue and self.queue[0][0] <= t:
            at, _, node, data = heapq.heappop(self.queue)
            self.now = at
            core = self.cores[node]
            if data is not None:
                self.handle(node, core.on_packet(at, wire.decode(data)))
            elif at >= core.next_wakeup():
                self.handle(node, core.on_timer(at))
        self.now = t

    def write(self, node: str, made: Op) -> None:
        assert self.logs[node].add(made)
        self.arrivals[(node, made.id)] = self.now
        self.handle(node, self.cores[node].broadcast(self.now, [made]))

    def holders(self, op_id: bytes) -> set[str]:
        return {n for n in self.ids if self.logs[n].has(op_id)}

    def roots(self) -> set[bytes]:
        return {self.logs[n].digest.root() for n in self.ids}


def user_op(i: int, wall_ms: int = T0_MS) -> Op:
    return op(USERS[i % len(USERS)], "account.update", {"name": f"u{i}"}, wall_ms=wall_ms + i)


def test_an_op_written_on_one_node_reaches_every_node_within_three_hops() -> None:
    net = Net(9)
    net.run_until(10.0)  # membership forms
    assert all(len(c.membership.alive()) == 8 for c in net.cores.values())
    made = user_op(1)
    start = net.now
    net.write("n05", made)
    net.run_until(start + 1.0)
    assert net.holders(made.id) == set(net.ids)
    latest = max(net.arrivals[(n, made.id)] for n in net.ids)
    # leaf -> parent -> core mesh -> children: three hops, each a link delay plus one flush.
    assert latest - start <= 3 * (net.delay_s + CONFIG.flush_interval_s) + 1e-9


def test_the_tree_has_sqrt_n_core_members_and_every_leaf_one_parent() -> None:
    net = Net(16)
    net.run_until(15.0)
    views = [c.describe() for c in net.cores.values()]
    cores = {tuple(v["core"]) for v in views}
    assert len(cores) == 1, "all nodes agree on the core once membership has converged"
    core = next(iter(cores))
    assert len(core) == math.isqrt(15) + 1
    parents = {v["node_id"]: v["parent"] for v in views}
    for node, parent in parents.items():
        assert (parent is None) == (node in core)
    children = {v["node_id"]: set(v["children"]) for v in views}
    for node, parent in parents.items():
        if parent is not None:
            assert node in children[parent]


def test_payload_copies_are_n_minus_one_plus_the_backup_path() -> None:
    net = Net(16)
    net.run_until(15.0)
    core = net.cores["n00"].describe()["core"]
    origin = next(n for n in net.ids if n not in core)
    before = len(net.sent)
    made = user_op(2)
    net.write(origin, made)
    net.run_until(net.now + 2.0)
    copies = sum(
        1
        for _, _, packet in net.sent[before:]
        for msg in packet.messages
        if isinstance(msg, Gossip)
        for body, _ in msg.ops
        if body == made.body
    )
    assert net.holders(made.id) == set(net.ids)
    # A spanning delivery (N-1), plus the leaf's copy to its backup core member and that
    # member's pushes to the rest of the core (which already has it): N-1 + |core|.
    assert copies == len(net.ids) - 1 + len(core)


def test_a_lost_tree_message_is_repaired_by_ihave_and_iwant() -> None:
    net = Net(9)
    net.run_until(10.0)
    made = user_op(3)
    lost: list[str] = []
    core = net.cores["n00"].describe()["core"]
    victim = next(n for n in reversed(net.ids) if n not in core and n != "n04")

    def drop_first_push(to: str, packet: Packet) -> bool:
        # The victim's only tree path is its parent's push: lose it once.
        carries = any(
            isinstance(m, Gossip) and made.body in (b for b, _ in m.ops) for m in packet.messages
        )
        if carries and to == victim and not lost:
            lost.append(to)
            return True
        return False

    net.drop = drop_first_push
    start = net.now
    net.write("n04", made)
    net.run_until(start + 0.5)
    assert lost
    assert net.holders(made.id) != set(net.ids), "the dropped push must leave someone without it"
    net.run_until(start + 3.0)
    assert net.holders(made.id) == set(net.ids)
    assert sum(c.stats.repairs_requested for c in net.cores.values()) >= 1
    latest = max(net.arrivals[(n, made.id)] for n in net.ids)
    assert (
        latest - start
        < CONFIG.sync_interval_s + CONFIG.ihave_interval_s + CONFIG.ihave_timeout_s + 0.5
    )


def test_a_new_child_gets_the_ops_that_crossed_its_attach() -> None:
    # A leaf that changes parent detaches from the old one and attaches to the new one at
    # once; ops that reach the new parent while the Attach is in flight must not wait for
    # IHAVE repair (broadcast-25's whole propagation tail, issue 14).
    net = Net(9)
    net.run_until(10.0)
    core = net.cores["n00"].describe()["core"]
    parent = core[0]
    leaf = next(
        n for n in net.ids if n not in net.cores[parent].describe()["children"] and n not in core
    )
    fresh, old = user_op(20), user_op(21)
    net.write(parent, old)
    net.run_until(net.now + CONFIG.attach_catch_up_s + 0.5)
    net.write(parent, fresh)
    net.run_until(net.now + 0.05)

    effects = net.cores[parent].on_packet(net.now, Packet(leaf, (Attach(()),), ()))
    effects += net.cores[parent].on_timer(net.now + CONFIG.flush_interval_s)
    sent = [(e.to, e.packet) for e in effects if isinstance(e, Send)]
    bodies = [
        body
        for to, packet in sent
        if to == leaf
        for msg in packet.messages
        if isinstance(msg, Gossip)
        for body, _ in msg.ops
    ]
    assert fresh.body in bodies, "the op from the last attach_catch_up_s goes to the new child"
    assert old.body not in bodies, "older ops are left to repair and anti-entropy"
    # A child refreshing its attachment is not caught up again.
    effects = net.cores[parent].on_packet(net.now + 0.1, Packet(leaf, (Attach(()),), ()))
    effects += net.cores[parent].on_timer(net.now + 0.1 + CONFIG.flush_interval_s)
    assert not any(
        isinstance(msg, Gossip)
        for e in effects
        if isinstance(e, Send) and e.to == leaf
        for msg in e.packet.messages
    )


def test_ops_written_while_a_node_knows_nobody_go_out_when_it_meets_the_fog() -> None:
    # A node that restarts with its disk lost knows only its seed until the join answer
    # arrives; what it writes meanwhile has no tree target and no lazy peer. Without the
    # catch-up on meeting the fog those ops waited for anti-entropy (churn-small seed 783: the
    # node crashed again first and five ops were lost). Anti-entropy is off here.
    config = dataclasses.replace(CONFIG, sync_interval_s=1_000.0)
    net = Net(5, config=config)
    net.run_until(10.0)
    net.logs["n04"] = MemLog()
    net.cores["n04"] = GossipCore("n04", "n04", config, random.Random(7), net.logs["n04"])
    net.handle("n04", net.cores["n04"].start(net.now, ["n00"]))
    alone = user_op(30)
    net.write("n04", alone)  # before any answer: n04's view is itself
    assert net.cores["n04"].describe()["core"] == ["n04"]
    start = net.now
    net.run_until(start + 0.5)
    # Pushed to the tree n04 then has (the other core members), in one round trip or so;
    # n04's children had re-attached elsewhere while it was gone and get it by repair.
    tree = set(net.cores["n04"].describe()["core"])
    assert len(tree) > 1
    assert tree <= net.holders(alone.id)
    net.run_until(start + 3.0)
    assert net.holders(alone.id) == set(net.ids)
    assert not any(isinstance(m, Sync) for at, _, p in net.sent if at >= start for m in p.messages)


def test_anti_entropy_merges_ops_that_were_never_broadcast() -> None:
    net = Net(4)
    net.run_until(5.0)
    for i in range(40):  # written behind gossip's back, as if during a partition
        net.logs[net.ids[i % 4]].add(user_op(100 + i))
    assert len(net.roots()) == 4
    net.run_until(net.now + 4 * CONFIG.sync_interval_s)
    assert len(net.roots()) == 1
    assert all(len(log.state.applied) == 40 for log in net.logs.values())
    assert any(isinstance(m, Sync) for _, _, p in net.sent for m in p.messages)


def test_an_invalid_op_dies_at_the_first_honest_hop() -> None:
    net = Net(5)
    net.run_until(8.0)
    good = user_op(4)
    forged_body = good.body.replace(b'"u4"', b'"xx"')
    attacker = Packet("n03", (Gossip(((forged_body, good.sig),)),))
    net.handle("n01", net.cores["n01"].on_packet(net.now, attacker))
    net.run_until(net.now + 3.0)
    assert net.rejected == ["bad_signature"]
    pushed = [
        b for _, _, p in net.sent for m in p.messages if isinstance(m, Gossip) for b, _ in m.ops
    ]
    assert forged_body not in pushed


def test_announcements_of_unknown_ids_are_bounded() -> None:
    config = GossipConfig(recent_ids_max=100)
    log = MemLog()
    core = GossipCore("me", "me", config, random.Random(3), log)
    core.start(0.0)
    rng = random.Random(4)
    for _ in range(20):
        core.on_packet(0.0, Packet("peer", (IHave(tuple(rng.randbytes(32) for _ in range(50))),)))
    assert core.describe()["missing"] == 100


def test_a_bad_sync_body_is_ignored() -> None:
    core = GossipCore("me", "me", CONFIG, random.Random(3), MemLog())
    core.start(0.0)
    effects = core.on_packet(0.0, Packet("peer", (Sync(7, b"\xff\x00garbage"),)))
    assert not any(
        isinstance(e, Send) and any(isinstance(m, Sync) for m in e.packet.messages) for e in effects
    )


def test_a_partitioned_pair_converges_after_the_partition_heals() -> None:
    net = Net(8, seed=5)
    net.run_until(10.0)
    left = set(net.ids[:4])
    net.drop = lambda to, packet: (packet.sender in left) != (to in left)
    written = []
    for i in range(20):
        node = net.ids[i % 8]
        made = user_op(200 + i, wall_ms=T0_MS + 10_000)
        written.append(made)
        net.write(node, made)
        net.run_until(net.now + 0.1)
    net.run_until(net.now + 20.0)  # long enough for each side to declare the other dead
    assert len(net.roots()) == 2
    net.drop = lambda to, packet: False
    heal = net.now
    net.run_until(heal + 30.0)
    assert len(net.roots()) == 1
    assert all(net.holders(m.id) == set(net.ids) for m in written)
    assert all(len(c.membership.alive()) == 7 for c in net.cores.values())
