"""The engine as a driver: timers, effects, crashes, slow nodes, verification and errors."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytest

from node.gossip.api import OpLog
from node.gossip.config import GossipConfig
from node.gossip.messages import Deliver, Effect, Gossip, Notify, Packet, Ping, Send
from node.ledger.op import Op
from simulations.cores import CoreSpec, SimCore
from simulations.engine import CORE_CLOCK_ORIGIN_S, T0_MS, SimError, SimLog, SimNode, Simulation
from tests.sim.conftest import run, scenario


class ScriptedCore:
    """A core that pings the next node every `period_s` and records what it was given."""

    period_s = 1.0
    calls: ClassVar[dict[str, list[tuple[str, float]]]] = {}

    def __init__(self, node_id: str, log: OpLog) -> None:
        self.node_id = node_id
        self.log = log
        self.stats: dict[str, int] = {}
        self.peers: list[str] = []
        self.wake = math.inf
        self.seen: list[tuple[str, float]] = ScriptedCore.calls.setdefault(node_id, [])

    def start(self, now: float, seeds: Sequence[str] = ()) -> list[Effect]:
        self.peers = sorted(seeds)
        self.wake = now + self.period_s
        self.seen.append(("start", now))
        return []

    def on_packet(self, now: float, packet: Packet) -> list[Effect]:
        self.seen.append(("packet", now))
        return []

    def on_timer(self, now: float) -> list[Effect]:
        self.seen.append(("timer", now))
        self.wake = now + self.period_s
        return [Send(p, Packet(self.node_id, (Ping(1),))) for p in self.peers]

    def next_wakeup(self) -> float:
        return self.wake

    def broadcast(self, now: float, ops: Sequence[Op]) -> list[Effect]:
        return []

    def on_ops_accepted(self, now: float, ops: Sequence[Op], sender: str) -> list[Effect]:
        self.seen.append(("accepted", float(len(ops))))
        return []

    def add_seed(self, now: float, node_id: str, addr: str) -> list[Effect]:
        return []

    def leave(self, now: float) -> list[Effect]:
        return []

    def members(self) -> Mapping[str, str]:
        return {}


def _spec(cls: type[Any] = ScriptedCore) -> CoreSpec:
    def make(
        node_id: str, addr: str, config: GossipConfig, rng: random.Random, log: OpLog, inc: int
    ) -> SimCore:
        core: SimCore = cls(node_id, log)
        return core

    return CoreSpec("scripted", make, full_roster=True, description="test")


def _sim(data: dict[str, Any], cls: type[Any] = ScriptedCore) -> Simulation:
    ScriptedCore.calls = {}
    base = {"nodes": 3, "duration_s": 5.0, "network": {"latency": "constant", "latency_ms": 10.0}}
    return Simulation(scenario({**base, **data}), _spec(cls))


def test_timers_fire_once_per_wakeup_at_the_time_asked() -> None:
    result = _sim({}).run()
    timers = [t for kind, t in ScriptedCore.calls["n0"] if kind == "timer"]
    origin = ScriptedCore.calls["n0"][0][1]  # start: now at virtual time 0
    assert [round(t - origin, 9) for t in timers] == [1.0, 2.0, 3.0, 4.0, 5.0]
    # 3 nodes x 5 rounds x 2 peers
    assert result.metrics["msgs"] == 30


def test_a_crashed_node_loses_packets_and_timers_then_restarts() -> None:
    result = _sim(
        {
            "faults": [
                {"at_s": 1.5, "action": "crash", "nodes": ["n1"]},
                {"at_s": 3.5, "action": "restart", "nodes": ["n1"]},
            ]
        }
    ).run()
    kinds = [kind for kind, _ in ScriptedCore.calls["n1"]]
    assert kinds.count("start") == 2
    # n1 is down for the pings sent at t=2 and t=3 (by n0 and n2).
    assert result.metrics["dropped"]["node_down"] == 4
    assert result.metrics["crashes"] == 1


def test_slow_node_handles_events_one_after_another() -> None:
    _sim(
        {
            "nodes": 5,
            "duration_s": 1.5,
            "faults": [{"at_s": 0.0, "action": "slow", "nodes": ["n0"], "delay_ms": 100.0}],
        }
    ).run()
    packets = [t for kind, t in ScriptedCore.calls["n0"] if kind == "packet"]
    gaps = [b - a for a, b in itertools.pairwise(packets)]
    # 4 pings arrive together at t=1.01; a node busy 100 ms per event takes them in turn.
    assert len(packets) == 4
    assert all(gap == pytest.approx(0.1) for gap in gaps)


class SpinningCore(ScriptedCore):
    def on_timer(self, now: float) -> list[Effect]:
        return []  # never moves its wake-up: a bug the engine must name


def test_a_core_that_never_advances_its_timer_is_reported() -> None:
    with pytest.raises(SimError, match="never advances"):
        _sim({}, SpinningCore).run()


class BadEffectCore(ScriptedCore):
    def on_timer(self, now: float) -> list[Effect]:
        return ["not an effect"]  # type: ignore[list-item]


def test_a_core_returning_a_non_effect_is_reported_with_reproduction() -> None:
    with pytest.raises(SimError, match=r"not an effect.*formation-sim run test --nodes 3 --seed 1"):
        _sim({}, BadEffectCore).run()


class InvalidOpCore(ScriptedCore):
    """Delivers a forged op (a real body with someone else's signature) and a valid one."""

    def on_packet(self, now: float, packet: Packet) -> list[Effect]:
        effects: list[Effect] = []
        for msg in packet.messages:
            if isinstance(msg, Gossip):
                (good,) = msg.ops
                forged = (good[0], bytes(64) + b"\x1b")
                effects.append(Deliver((forged, good, good), packet.sender))
        return effects

    def broadcast(self, now: float, ops: Sequence[Op]) -> list[Effect]:
        return [
            Send(p, Packet(self.node_id, (Gossip(((op.body, op.sig),)),)))
            for p in self.peers
            for op in ops
        ]


def test_invalid_ops_are_rejected_and_valid_ones_accepted_once() -> None:
    result = _sim(
        {
            "nodes": 2,
            "duration_s": 2.0,
            "workload": {"ops_total": 1, "start_s": 0.5, "stop_s": 0.6},
        },
        InvalidOpCore,
    ).run()
    m = result.metrics
    assert (m["ops_rejected"], m["deliver_duplicates"], m["converged"]) == (1, 1, True)
    receiver = next(n for n, calls in ScriptedCore.calls.items() if ("accepted", 1.0) in calls)
    assert receiver in ("n0", "n1")


class AccusingCore(ScriptedCore):
    def on_timer(self, now: float) -> list[Effect]:
        self.wake = now + self.period_s
        return [Notify("suspect", p) for p in self.peers[:1]]


def test_suspecting_a_healthy_reachable_node_counts_as_false_after_the_grace() -> None:
    # Each of 3 nodes accuses a peer at t = 1, 2, 3, 4. The default grace (2 probe intervals +
    # a probe timeout = 2.5 s after the target started) excuses the first two rounds.
    m = _sim({"duration_s": 4.5}, AccusingCore).run().metrics
    assert (m["false_suspicions"], m["notifies"]) == (6, {"suspect": 12})
    m = _sim({"duration_s": 4.5, "check": {"suspicion_grace_s": 0.0}}, AccusingCore).run().metrics
    assert m["false_suspicions"] == 12


def test_simlog_reads_bodies_from_the_shared_table_for_held_ids_only() -> None:
    from simulations.workload import Workload

    op = Workload(random.Random(1), "sim").op(1_760_000_000_000)
    other = Workload(random.Random(2), "sim").op(1_760_000_000_000)
    wires = {op.id: (op.body, op.sig), other.id: (other.body, other.sig)}
    log = SimLog(wires, 0.0, keep_state=True)
    from node.ledger.state import State

    assert log.add(op, State.check_op(op)) is True
    assert log.add(op, State.check_op(op)) is False
    assert (log.has(op.id), log.has(other.id)) == (True, False)
    assert log.get_wire([other.id, op.id]) == [(op.body, op.sig)]
    assert log.digest is log.state.digest if log.state is not None else False


def test_state_nodes_limits_full_states_to_a_sample() -> None:
    sc = scenario(
        {
            "nodes": 12,
            "state_nodes": 3,
            "duration_s": 6.0,
            "network": {"latency": "constant", "latency_ms": 5.0},
            "workload": {"ops_per_s": 10.0, "start_s": 0.5, "stop_s": 3.0},
        }
    )
    m = run(sc).metrics
    assert (m["converged"], m["state_hashes_checked"]) == (True, 3)


def test_a_nodes_wall_clock_is_virtual_time_from_t0_plus_its_skew_and_steps() -> None:
    node = SimNode(0, SimLog({}, 0.0, keep_state=False), CORE_CLOCK_ORIGIN_S + 0.25, False)
    assert node.wall_ms(0.0) == T0_MS + 250
    assert node.wall_ms(1.5) == T0_MS + 1_750
    node.wall_skew_s = -2.0  # a skew fault steps the wall clock only
    assert node.wall_ms(1.5) == T0_MS - 250
    assert node.wall_ms(1.5) - T0_MS == int((1.5 + 0.25 - 2.0) * 1000)


def test_invariants_report_each_failed_check_with_its_measurement_and_bound() -> None:
    from simulations import invariants
    from simulations.metrics import CrashRecord
    from simulations.scenario import CheckSpec

    check = CheckSpec(max={"ops_lost": 0.0}, min={"live_nodes": 3.0})
    report = {
        "converged": False,
        "digest_roots_distinct": 2,
        "state_hashes_distinct": 1,
        "live_nodes": 2,
        "ops_lost": 1,
    }
    assert invariants.failures(check, report) == [
        "not converged: 2 distinct digest roots and 1 distinct state hashes over 2 live nodes",
        "ops_lost = 1 is over the bound 0",
        "live_nodes = 2 is under the bound 3",
    ]
    found, late, short = CrashRecord(0, 1.0), CrashRecord(1, 1.0), CrashRecord(2, 1.0)
    found.first_dead_at, late.first_dead_at, short.restarted_at = 2.0, 9.0, 2.0
    assert invariants.crashes_undetected([found, late, short], 10.0, within_s=5.0) == 1


@pytest.mark.parametrize("keep_state", [True, False])
def test_a_restarted_node_takes_its_clock_from_its_log_as_the_replica_does(
    keep_state: bool,
) -> None:
    from node.ledger.admission import own
    from simulations.workload import Workload

    sim = _sim({})
    node = sim.nodes[1]
    node.log = SimLog(sim.wires, 0.0, keep_state=keep_state)
    sim.start(node, 0.0)
    held = Workload(random.Random(1), "sim").op(T0_MS + 5_000, 3)
    node.log.add(*own(held))
    node.hlc.now(T0_MS + 60_000)  # ahead of every op held, e.g. before a step back of its clock
    sim.faults.crash(node, 1.0)
    sim.faults.restart(node, 2.0, "kept")
    assert (node.hlc.wall_ms, node.hlc.logical) == node.log.clock_max() == (T0_MS + 5_000, 3)
    sim.faults.crash(node, 3.0)
    sim.faults.restart(node, 4.0, "lost")
    assert (node.hlc.wall_ms, node.hlc.logical) == node.log.clock_max() == (0, 0)


class RelayingCore(ScriptedCore):
    """On a Gossip: Deliver it, then a Ping(1) to every peer; after the ops are accepted, a
    Ping(2). Records the Pings it receives."""

    def on_packet(self, now: float, packet: Packet) -> list[Effect]:
        effects: list[Effect] = []
        for msg in packet.messages:
            if isinstance(msg, Gossip):
                effects.append(Deliver(msg.ops, packet.sender))
                effects += [Send(p, Packet(self.node_id, (Ping(1),))) for p in self.peers]
            elif isinstance(msg, Ping):
                self.seen.append(("ping", float(msg.seq)))
        return effects

    def on_timer(self, now: float) -> list[Effect]:
        self.wake = math.inf
        return []

    def on_ops_accepted(self, now: float, ops: Sequence[Op], sender: str) -> list[Effect]:
        return [Send(p, Packet(self.node_id, (Ping(2),))) for p in self.peers if ops]

    broadcast = InvalidOpCore.broadcast


def test_effects_a_deliver_leads_to_queue_behind_the_rest_as_in_the_trio_driver() -> None:
    _sim(
        {
            "nodes": 3,
            "duration_s": 2.0,
            "workload": {"ops_total": 1, "start_s": 0.5, "stop_s": 0.6},
        },
        RelayingCore,
    ).run()
    pings = [[t for kind, t in calls if kind == "ping"] for calls in ScriptedCore.calls.values()]
    # Every sender's Ping(1) (returned with the Deliver) goes before its Ping(2) (returned by
    # on_ops_accepted), so with equal latencies it arrives first (recursing did the reverse).
    assert sorted(pings) == [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0, 1.0, 2.0]]
