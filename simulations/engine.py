"""Deterministic discrete-event simulation of many gossip nodes in one process.

Theory of operation
-------------------
Every node is a bare gossip core (``simulations.cores``) plus a ``SimLog``, its in-memory op
log. Everything that happens is an event in one heap of ``(at, seq, kind, node, payload)``:
``at`` is virtual time in seconds and ``seq`` a counter that breaks ties, so two events at the
same instant always run in the order they were scheduled (corrosion's sim, FoundationDB,
TigerBeetle's VOPR all do this). Nothing reads a real clock and every random choice comes from
one ``random.Random(seed)``: the network's RNG, each node's RNG (handed to its core), the
workload's and the engine's own are all drawn from it in a fixed order. So a run is a pure
function of (scenario, seed, code), and ``trace_hash`` (blake2b over one canonical line per
processed event) proves it: the same seed gives a byte-identical trace.

The engine is the core's driver. It calls ``on_packet``/``on_timer``/``broadcast``/``start``
and performs the effects the core returns:

``Send``
    the network model (``simulations.network``) picks an arrival time or drops the packet; the
    ``Packet`` object itself is delivered (never encoded: bytes are accounted with
    ``simulations.sizes``).
``Deliver``
    the ops go through ``node.ledger.admission`` as in ``node.replica`` (verify, admit: duplicate,
    deferred or fresh, accept: applied to the node's ``SimLog``), then the core hears
    ``on_ops_accepted`` with the ops accepted. Verification (``admission.verify``: ``decode_op``,
    an ECDSA recovery of ~50 us, + ``State.check_op``) is **cached per run** by
    ``(body, sig)``, i.e. by op id + signature: every honest node would reach the same
    stateless verdict, so running it once per node would only make a 1,000-node run 1,000x
    slower without simulating anything more. Each node still stores and applies every op itself.
``Notify``
    recorded (false-suspicion and failure-detection metrics).

Timers: after every call the engine asks ``next_wakeup()`` and keeps one pending timer event
per node; a wake-up that moved makes the old event stale (it is skipped when popped).

Each node has a clock offset (``clock_skew_ms_max``): a core's ``now`` is virtual time + its
offset + ``CORE_CLOCK_ORIGIN_S``, and ops' ``wall_ms`` come from that node's wall clock
(``SimNode.wall_ms``, the one place virtual time becomes wall-clock ms). A ``skew`` fault steps only the wall clock (NTP steps wall clocks; monotonic clocks never jump).
A slow node handles each event ``delay_ms`` after the previous one finished (a CPU-starved
process: the Lifeguard scenario). A crashed node loses everything in flight to it and its
timers; it restarts with its log (``disk = "kept"``: new core, incarnation + 1) or with an
empty one (``"lost"``: a fresh replica, incarnation 0).

Memory: the run shares one ``id -> (body, sig)`` table among all nodes (``SimLog`` holds the
ids, in its digest, and reads bodies from it): bytes are immutable, so this is what 1,000 logs
holding the same ops would contain, without 1,000 references per op. ``state_nodes`` limits how
many nodes also keep a full ``State`` (a seeded sample; the rest keep the digest only), for
runs where 1,000 States would not fit in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import os
import random
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from node.gossip.messages import Deliver, Gossip, Notify, Packet, Send, WireOp
from node.ledger.admission import Checked, SubmitResult, Verdict, accept, admit, own, verify
from node.ledger.digest import OpDigest
from node.ledger.hlc import HLC
from node.ledger.op import Op
from node.ledger.state import State
from simulations.cores import CoreSpec, SimCore
from simulations.metrics import METRIC_NAMES, CrashRecord, Metrics
from simulations.network import BRIDGE, Network
from simulations.scenario import SCENARIO_DIR, Fault, Scenario
from simulations.sizes import SIZE_SOURCE, WIRE_CHECK_EVERY, packet_size, wire_size
from simulations.workload import Workload

__all__ = [
    "CORE_CLOCK_ORIGIN_S",
    "NETWORK_ID",
    "T0_MS",
    "RunResult",
    "SimError",
    "SimLog",
    "SimNode",
    "Simulation",
    "run_scenario",
]

NETWORK_ID: Final = "sim"
# Virtual time 0 on the wall clock (ops' hlc wall_ms): 2025-10-09, any fixed instant would do.
T0_MS: Final = 1_760_000_000_000
# Added to every core's `now` so that clock offsets never make it negative.
CORE_CLOCK_ORIGIN_S: Final = 10_000.0
_SKEW_S_MAX: Final = 3_600.0

# Event kinds (the order only matters for trace lines; seq orders events).
PACKET: Final = 0
TIMER: Final = 1
OP: Final = 2
START: Final = 3
FAULT: Final = 4
CHECK: Final = 5
_TRACE_CHUNK: Final = 4096
# Packets this big are always checked against node.gossip.wire (its limits: 4 MiB, 1,024).
_WIRE_CHECK_BYTES: Final = 256 * 1024
_WIRE_CHECK_MESSAGES: Final = 256
# A core whose next_wakeup() does not move past `now` would spin the engine forever.
_SAME_INSTANT_TIMERS_MAX: Final = 10_000

ProgressFn = Callable[[float, float], None]


class SimError(RuntimeError):
    """The simulated system broke a rule of the driver API (a core bug), or the run could not
    proceed; the message says which node, when, and how to reproduce."""


class SimLog:
    """One node's in-memory op log: the ``node.gossip.api.OpLog`` the core reads."""

    __slots__ = ("born_at", "digest", "state", "wires")

    def __init__(self, wires: dict[bytes, WireOp], born_at: float, *, keep_state: bool) -> None:
        self.wires = wires
        self.born_at = born_at
        self.state = State(NETWORK_ID) if keep_state else None
        self.digest = self.state.digest if self.state is not None else OpDigest()

    def has(self, op_id: bytes) -> bool:
        return op_id in self.digest

    def get_wire(self, ids: Iterable[bytes]) -> list[WireOp]:
        digest, wires = self.digest, self.wires
        return [wires[i] for i in ids if i in digest]

    def add(self, op: Op, payload: dict[str, Any]) -> bool:
        if self.state is not None:
            return self.state.apply(op, payload)
        return self.digest.add(op.id, op.wall_ms)

    def clock_max(self) -> tuple[int, int]:
        return self.state.clock_max if self.state is not None else (0, 0)


class SimNode:
    __slots__ = (
        "addr",
        "busy_until",
        "clock_s",
        "core",
        "hlc",
        "incarnation",
        "index",
        "keep_state",
        "left",
        "log",
        "node_id",
        "same_instant",
        "slow_s",
        "started",
        "timer_at",
        "up",
        "up_since",
        "wall_skew_s",
    )

    def __init__(self, index: int, log: SimLog, clock_s: float, keep_state: bool) -> None:
        self.index = index
        self.node_id = f"n{index}"
        self.addr = f"sim://{self.node_id}"
        self.log = log
        self.keep_state = keep_state
        self.core: SimCore | None = None
        self.hlc = HLC()
        self.incarnation = 0
        self.up = False
        self.up_since = 0.0
        self.started = False
        self.left = False
        # Monotonic clock offset (origin + skew) and the wall clock's extra step (skew faults).
        self.clock_s = clock_s
        self.wall_skew_s = 0.0
        self.slow_s = 0.0
        self.busy_until = 0.0
        self.timer_at = math.inf
        self.same_instant = 0

    @property
    def live(self) -> bool:
        return self.up and not self.left

    def wall_ms(self, at: float) -> int:
        """This node's wall clock at virtual time ``at``, in ms: what the real node reads from
        ``time.time_ns()`` and hands its HLC (ops' ``wall_ms``). ``T0_MS`` at virtual time 0,
        plus the node's clock skew and any ``skew`` fault's step; never before the epoch."""
        return max(
            T0_MS + int((at + self.clock_s - CORE_CLOCK_ORIGIN_S + self.wall_skew_s) * 1000), 0
        )


@dataclass
class RunResult:
    scenario: Scenario
    core: str
    metrics: dict[str, Any]
    failures: list[str]
    cdf: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def reproduce(self) -> str:
        return (
            f"formation-sim run {_scenario_arg(self.scenario)} "
            f"--nodes {self.scenario.nodes} --seed {self.scenario.seed} --core {self.core}"
        )


def _scenario_arg(scenario: Scenario) -> str:
    """How to name the scenario on the command line: its name if shipped, else its path."""
    if not scenario.source or Path(scenario.source).parent.resolve() == SCENARIO_DIR.resolve():
        return scenario.name
    return scenario.source


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Simulation:
    """One run of one scenario with one core. ``run()`` once, then read the ``RunResult``."""

    def __init__(
        self,
        scenario: Scenario,
        core: CoreSpec,
        *,
        trace: IO[str] | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        unknown = sorted((set(scenario.check.max) | set(scenario.check.min)) - set(METRIC_NAMES))
        if unknown:
            raise SimError(
                f"scenario {scenario.name} checks unknown metric(s) {', '.join(unknown)}; "
                f"known: {', '.join(METRIC_NAMES)}"
            )
        self.scenario = scenario
        self.spec = core
        self.trace_file = trace
        self.progress = progress
        self.rng = random.Random(scenario.seed)
        rng = self.rng
        self.net = Network(scenario.network, random.Random(rng.getrandbits(64)), 0)
        w = scenario.workload
        self.workload = Workload(
            random.Random(rng.getrandbits(64)), NETWORK_ID, users=w.users, nodes=w.authors_nodes
        )
        self.metrics = Metrics()
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.events = 0
        self.pending_disturbances = 0
        self.partition_generation = 0
        self.wires: dict[bytes, WireOp] = {}
        self.verified: dict[WireOp, Verdict] = {}
        self.nodes: list[SimNode] = []
        self.index: dict[str, int] = {}
        self.up_nodes: list[int] = []  # sorted indices of live nodes (workload origins)
        self.retired_stats: list[Any] = []
        self._trace_hash = hashlib.blake2b(digest_size=16)
        self._trace_lines: list[str] = []
        self._size_packet: Packet | None = None
        self._size_value = 0
        self._sized = 0
        g = scenario.gossip
        self._grace_s = (
            scenario.check.suspicion_grace_s
            if scenario.check.suspicion_grace_s is not None
            else 2 * g.probe_interval_s + g.probe_timeout_s
        )
        self._op_seq = 0
        self._stop = False
        self.rss_before = _rss_bytes()
        state_all = scenario.state_nodes is None or scenario.state_nodes >= scenario.nodes
        keep = (
            set(range(scenario.nodes))
            if state_all
            else set(rng.sample(range(scenario.nodes), scenario.state_nodes or 0))
        )
        self._state_for_joiners = state_all
        for i in range(scenario.nodes):
            self._new_node(i in keep)
        for node in self.nodes:
            start_at = rng.uniform(0.0, scenario.join_spread_s) if scenario.join_spread_s else 0.0
            self._push_disturbance(start_at, START, node.index, None)
        self._schedule_workload_first()
        for fault in scenario.faults:
            self._push_disturbance(fault.at_s, FAULT, -1, fault)
        self._push(scenario.check_interval_s, CHECK, -1, None)

    # -- scheduling ----------------------------------------------------------------------------

    def _push(self, at: float, kind: int, node: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, node, payload))

    def _push_disturbance(self, at: float, kind: int, node: int, payload: Any) -> None:
        self.pending_disturbances += 1
        self._push(at, kind, node, payload)

    def _new_node(self, keep_state: bool) -> SimNode:
        index = len(self.nodes)
        skew_max_s = self.scenario.clock_skew_ms_max / 1000.0
        skew = self.rng.uniform(-skew_max_s, skew_max_s) if skew_max_s else 0.0
        if abs(skew) > _SKEW_S_MAX:
            raise SimError(f"clock_skew_ms_max is over {_SKEW_S_MAX * 1000:g} ms; use less")
        log = SimLog(self.wires, self.now, keep_state=keep_state)
        node = SimNode(index, log, CORE_CLOCK_ORIGIN_S + skew, keep_state)
        self.nodes.append(node)
        self.index[node.node_id] = index
        if index >= len(self.net.group):
            self.net.add_node()
        return node

    def _rearm(self, node: SimNode, at: float) -> None:
        core = node.core
        if core is None or not node.up:
            return
        wake = core.next_wakeup() - node.clock_s
        if wake != node.timer_at:
            node.timer_at = wake
            if wake < math.inf:
                self._push(wake if wake > at else at, TIMER, node.index, wake)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.perf_counter()
        duration = self.scenario.duration_s
        heap = self.heap
        pop = heapq.heappop
        nodes = self.nodes
        lines = self._trace_lines
        progress = self.progress
        while heap and not self._stop:
            if heap[0][0] > duration:
                break
            at, _seq, kind, idx, payload = pop(heap)
            self.now = at
            self.events += 1
            if kind == PACKET:
                node = nodes[idx]
                if not node.up:
                    self.metrics.dropped_node_down += 1
                    lines.append(f"{at!r} P {idx} {payload.sender} down")
                elif node.slow_s and node.busy_until > at:
                    self._push(node.busy_until, PACKET, idx, payload)
                    continue
                else:
                    core = node.core
                    assert core is not None
                    effects = core.on_packet(at + node.clock_s, payload)
                    lines.append(
                        f"{at!r} P {idx} {payload.sender} {len(payload.messages)} "
                        f"{len(payload.updates)} {len(effects)}"
                    )
                    if node.slow_s:
                        node.busy_until = at + node.slow_s
                    if effects:
                        self._handle(node, at, effects)
                    self._rearm(node, at)
            elif kind == TIMER:
                node = nodes[idx]
                if payload != node.timer_at or not node.up:
                    continue  # stale: the wake-up moved, or the node crashed
                if node.slow_s and node.busy_until > at:
                    node.timer_at = node.busy_until
                    self._push(node.busy_until, TIMER, idx, node.busy_until)
                    continue
                node.timer_at = math.inf
                core = node.core
                assert core is not None
                effects = core.on_timer(at + node.clock_s)
                lines.append(f"{at!r} T {idx} {len(effects)}")
                if node.slow_s:
                    node.busy_until = at + node.slow_s
                if effects:
                    self._handle(node, at, effects)
                self._rearm(node, at)
                if node.timer_at <= at:
                    node.same_instant += 1
                    if node.same_instant > _SAME_INSTANT_TIMERS_MAX:
                        raise SimError(
                            self._blame(
                                node,
                                "next_wakeup() stays at or before now after on_timer; the core never advances its timer",
                            )
                        )
                else:
                    node.same_instant = 0
            elif kind == CHECK:
                self._check(at)
            else:
                self.pending_disturbances -= 1
                self.metrics.last_disturbance_at = at
                self.metrics.settled_at = None
                if kind == OP:
                    self._write_op(at)
                elif kind == START:
                    self._start(nodes[idx], at)
                else:
                    self._fault(at, payload)
            if len(lines) >= _TRACE_CHUNK:
                self._flush_trace()
                if progress is not None:
                    progress(at, duration)
        self._flush_trace()
        if not self._stop:
            self.now = max(self.now, duration)
        wall_s = time.perf_counter() - started
        return self._finish(wall_s)

    def _flush_trace(self) -> None:
        if not self._trace_lines:
            return
        text = "\n".join(self._trace_lines) + "\n"
        self._trace_lines.clear()
        self._trace_hash.update(text.encode())
        if self.trace_file is not None:
            self.trace_file.write(text)

    def _blame(self, node: SimNode, what: str) -> str:
        return (
            f"node {node.node_id} at t={self.now:.6f}s: {what}. "
            f"Reproduce: formation-sim run {_scenario_arg(self.scenario)} "
            f"--nodes {self.scenario.nodes} --seed {self.scenario.seed} --core {self.spec.name}"
        )

    # -- effects -------------------------------------------------------------------------------

    def _handle(self, node: SimNode, at: float, effects: list[Any]) -> None:
        for effect in effects:
            kind = type(effect)
            if kind is Send:
                self._send(node, at, effect)
            elif kind is Deliver:
                self._deliver(node, at, effect)
            elif kind is Notify:
                self._notify(node, at, effect)
            else:
                raise SimError(
                    self._blame(node, f"the core returned {effect!r}, which is not an effect")
                )

    def _send(self, node: SimNode, at: float, send: Send) -> None:
        packet = send.packet
        m = self.metrics
        if packet is self._size_packet:
            size = self._size_value
        else:
            size = packet_size(packet)
            self._size_packet, self._size_value = packet, size
            self._sized += 1
            # A sample, plus every packet big enough to be near a wire limit.
            if wire_size is not None and (
                self._sized % WIRE_CHECK_EVERY == 1
                or size > _WIRE_CHECK_BYTES
                or len(packet.messages) > _WIRE_CHECK_MESSAGES
            ):
                self._wire_check(node, packet, size)
        m.sends += 1
        m.bytes += size
        kinds = m.messages_by_kind
        for msg in packet.messages:
            t = type(msg)
            kinds[t] = kinds.get(t, 0) + 1
            if t is Gossip:
                m.payload_copies += len(msg.ops)  # type: ignore[union-attr]
        dst = self.index.get(send.to)
        if dst is None:
            m.dropped_unknown += 1
            return
        net = self.net
        arrive = net.route(node.index, dst, at, size)
        if arrive >= 0.0:
            self._push(arrive, PACKET, dst, packet)
            if net.config.duplicate_ratio:
                again = net.duplicate(node.index, dst, at)
                if again >= 0.0:
                    self._push(again, PACKET, dst, packet)

    def _wire_check(self, node: SimNode, packet: Packet, size: int) -> None:
        assert wire_size is not None
        try:
            exact = wire_size(packet)
        except ValueError as exc:
            raise SimError(
                self._blame(node, f"sent a packet the wire format refuses: {exc}")
            ) from None
        if exact != size:
            raise SimError(
                f"simulations.sizes.packet_size says {size} bytes but wire.encoded_size says {exact}"
                f" for {packet!r}: update simulations/sizes.py to the wire layout"
            )

    def _deliver(self, node: SimNode, at: float, deliver: Deliver) -> None:
        # node.ledger.admission's rule, as node.replica runs it; only verify's verdicts are
        # cached (they depend on the op alone) and nothing needs to be made durable.
        m = self.metrics
        log = node.log
        verified = self.verified
        checked: list[Checked] = []
        for wire in deliver.ops:
            verdict = verified.get(wire)
            if verdict is None:
                verdict = verified[wire] = verify(wire[0], wire[1], NETWORK_ID)
            if type(verdict) is not tuple:
                m.ops_rejected += 1
                continue
            checked.append(verdict)
        result = SubmitResult()
        fresh = admit(checked, node.wall_ms(at), node.hlc, log.digest, result)
        m.deliver_duplicates += len(result.duplicates)
        m.ops_deferred += len(result.deferred)
        accept(fresh, log.add, result)
        accepted = result.accepted
        for op in accepted:
            m.arrival(op.id, at, log.born_at)
        core = node.core
        assert core is not None
        effects = core.on_ops_accepted(at + node.clock_s, accepted, deliver.sender)
        if effects:
            self._handle(node, at, effects)

    def _notify(self, node: SimNode, at: float, notify: Notify) -> None:
        m = self.metrics
        m.notifies[notify.event] = m.notifies.get(notify.event, 0) + 1
        target = self.index.get(notify.node)
        if target is None or notify.event not in ("suspect", "dead"):
            return
        other = self.nodes[target]
        calm_since = max(other.up_since, self.net.changed_at)
        if (
            other.live
            and self.net.reachable(node.index, target)
            and at - calm_since >= self._grace_s
        ):
            m.false_suspicions += 1
            if len(m.false_suspicion_examples) < 10:
                m.false_suspicion_examples.append(
                    f"{at:.3f}s {node.node_id} reported {other.node_id} {notify.event}"
                )
            return
        if notify.event != "dead" or other.up:
            return
        for crash in reversed(m.crashes):
            if crash.node == target:
                if crash.restarted_at is None:
                    if crash.first_dead_at is None:
                        crash.first_dead_at = at
                    crash.reporters.add(node.index)
                    if (
                        crash.all_dead_at is None
                        and len(crash.reporters) >= len(self.up_nodes)
                        and set(self.up_nodes) <= crash.reporters
                    ):
                        crash.all_dead_at = at
                break

    # -- nodes ---------------------------------------------------------------------------------

    def _seeds_for(self, node: SimNode) -> list[str]:
        if self.spec.full_roster:
            return [n.node_id for n in self.nodes if n is not node]
        count = min(self.scenario.seeds, len(self.nodes))
        return [f"n{i}" for i in range(count) if i != node.index]

    def _start(self, node: SimNode, at: float, *, incarnation: int = 0) -> None:
        if node.up:
            return
        node.core = self.spec.factory(
            node.node_id,
            node.addr,
            self.scenario.gossip,
            random.Random(self.rng.getrandbits(64)),
            node.log,
            incarnation,
        )
        node.incarnation = incarnation
        node.up = True
        node.up_since = at
        node.started = True
        node.timer_at = math.inf
        node.busy_until = at
        self._set_up(node.index, True)
        effects = node.core.start(at + node.clock_s, self._seeds_for(node))
        self._trace(f"{at!r} S {node.index} {incarnation} {len(effects)}")
        if effects:
            self._handle(node, at, effects)
        self._rearm(node, at)

    def _set_up(self, index: int, up: bool) -> None:
        ups = self.up_nodes
        if up:
            if index not in ups:
                ups.append(index)
                ups.sort()
        elif index in ups:
            ups.remove(index)

    def _crash(self, node: SimNode, at: float) -> None:
        if not node.up:
            return
        if node.core is not None:
            self.retired_stats.append(node.core.stats)
        node.up = False
        node.core = None
        node.timer_at = math.inf
        self._set_up(node.index, False)
        self.metrics.crashes.append(CrashRecord(node.index, at))

    def _restart(self, node: SimNode, at: float, disk: str) -> None:
        if node.up or node.left:
            return
        for crash in reversed(self.metrics.crashes):
            if crash.node == node.index:
                crash.restarted_at = at
                break
        if disk == "lost":
            node.log = SimLog(self.wires, at, keep_state=node.keep_state)
            node.hlc = HLC()
            incarnation = 0
        else:
            # node.replica restarts its clock past everything it holds; this node's HLC object
            # already is (it only ever moved forward).
            incarnation = node.incarnation + 1
        self._start(node, at, incarnation=incarnation)

    def _trace(self, line: str) -> None:
        self._trace_lines.append(line)

    # -- workload ------------------------------------------------------------------------------

    def _schedule_workload_first(self) -> None:
        w = self.scenario.workload
        if w.ops_total:
            self._push_disturbance(self._op_time(0), OP, -1, None)
        elif w.ops_per_s > 0:
            first = w.start_s + self.rng.expovariate(w.ops_per_s)
            if first < w.stop_s:
                self._push_disturbance(first, OP, -1, None)

    def _op_time(self, k: int) -> float:
        w = self.scenario.workload
        return w.start_s + (k + 0.5) * (w.stop_s - w.start_s) / w.ops_total

    def _write_op(self, at: float) -> None:
        w = self.scenario.workload
        self._op_seq += 1
        if w.ops_total:
            if self._op_seq < w.ops_total:
                self._push_disturbance(self._op_time(self._op_seq), OP, -1, None)
        else:
            following = at + self.rng.expovariate(w.ops_per_s)
            if following < w.stop_s:
                self._push_disturbance(following, OP, -1, None)
        ups = self.up_nodes
        if not ups:
            self.metrics.ops_skipped += 1
            self._trace(f"{at!r} O - skipped")
            return
        node = self.nodes[ups[self.rng.randrange(len(ups))]]
        clock = node.hlc.now(node.wall_ms(at))
        op, payload = own(self.workload.op(clock[0], clock[1]))
        self.wires[op.id] = (op.body, op.sig)
        added = node.log.add(op, payload)
        if not self.metrics.op_created(op.id, at, len(ups) - 1) and added:
            # The same op written again elsewhere: this writer holds it from now on.
            self.metrics.arrival(op.id, at, node.log.born_at)
        core = node.core
        assert core is not None
        effects = core.broadcast(at + node.clock_s, [op])
        self._trace(f"{at!r} O {node.index} {op.id.hex()[:16]} {len(effects)}")
        if effects:
            self._handle(node, at, effects)
        self._rearm(node, at)

    # -- faults --------------------------------------------------------------------------------

    def _select(self, knobs: dict[str, Any], eligible: list[SimNode]) -> list[SimNode]:
        if "nodes" in knobs:
            wanted = set(knobs["nodes"])
            return [n for n in eligible if n.node_id in wanted]
        if "count" in knobs:
            count = min(int(knobs["count"]), len(eligible))
        elif "fraction" in knobs:
            count = min(len(eligible), max(1, round(float(knobs["fraction"]) * len(eligible))))
        else:
            return list(eligible)
        picked = self.rng.sample(eligible, count)
        return sorted(picked, key=lambda n: n.index)

    def _fault(self, at: float, fault: Any) -> None:
        if isinstance(fault, tuple):
            self._internal_fault(at, fault)
            return
        assert isinstance(fault, Fault)
        self._trace(f"{at!r} F {fault.describe()}")
        knobs = fault.knobs
        action = fault.action
        live = [n for n in self.nodes if n.live]
        if action == "partition":
            self._partition(at, knobs)
        elif action == "heal":
            self._heal(at)
        elif action == "crash":
            for node in self._select(knobs, live):
                self._crash(node, at)
                if "restart_after_s" in knobs:
                    self._push_disturbance(
                        at + knobs["restart_after_s"],
                        FAULT,
                        -1,
                        ("restart", node.index, knobs.get("disk", "kept")),
                    )
        elif action == "restart":
            down = [n for n in self.nodes if n.started and not n.up and not n.left]
            for node in self._select(knobs, down):
                self._restart(node, at, knobs.get("disk", "kept"))
        elif action == "join":
            for _ in range(int(knobs["count"])):
                node = self._new_node(self._state_for_joiners)
                self._start(node, at)
        elif action == "leave":
            for node in self._select(knobs, live):
                assert node.core is not None
                effects = node.core.leave(at + node.clock_s)
                self._handle(node, at, effects)
                if node.core is not None:
                    self.retired_stats.append(node.core.stats)
                node.left = True
                node.up = False
                node.core = None
                node.timer_at = math.inf
                self._set_up(node.index, False)
        elif action == "skew":
            for node in self._select(knobs, live):
                if "skew_ms" in knobs:
                    node.wall_skew_s = knobs["skew_ms"] / 1000.0
                else:
                    limit = knobs["skew_ms_max"] / 1000.0
                    node.wall_skew_s = self.rng.uniform(-limit, limit)
        elif action == "slow":
            for node in self._select(knobs, live):
                node.slow_s = knobs["delay_ms"] / 1000.0
        elif action == "network":
            self.net.reconfigure(self.net.config.updated(knobs, f"fault at {at:g}s"))
        elif action == "churn":
            self._internal_fault(at, ("churn", knobs))

    def _internal_fault(self, at: float, fault: tuple[Any, ...]) -> None:
        what = fault[0]
        self._trace(f"{at!r} F {what} {fault[1:]!r}")
        if what == "restart":
            self._restart(self.nodes[fault[1]], at, fault[2])
        elif what == "heal" and fault[1] == self.partition_generation:
            self._heal(at)
        elif what == "flap" and fault[1] == self.partition_generation:
            self.net.active = not self.net.active
            self.net.changed_at = at
            self._push_disturbance(at + fault[2], FAULT, -1, fault)
        elif what == "churn":
            knobs = fault[1]
            live = [n for n in self.nodes if n.live]
            count = min(int(knobs["count"]), max(0, len(live) - 1))
            for node in sorted(self.rng.sample(live, count), key=lambda n: n.index):
                self._crash(node, at)
                disk = "lost" if self.rng.random() < knobs["disk_lost_ratio"] else "kept"
                self._push_disturbance(
                    at + knobs["down_s"], FAULT, -1, ("restart", node.index, disk)
                )
            following = at + knobs["interval_s"]
            if following <= knobs["until_s"]:
                self._push_disturbance(following, FAULT, -1, fault)

    def _partition(self, at: float, knobs: dict[str, Any]) -> None:
        n = len(self.nodes)
        order = list(range(n))
        self.rng.shuffle(order)
        groups = [0] * n
        if "groups" in knobs:
            listed = knobs["groups"]
            for i in range(n):
                groups[i] = len(listed) - 1
            for g, names in enumerate(listed):
                for name in names:
                    if name in self.index:
                        groups[self.index[name]] = g
        elif "fraction" in knobs:
            cut = round(float(knobs["fraction"]) * n)
            for pos, i in enumerate(order):
                groups[i] = 0 if pos < cut else 1
        else:
            sides = int(knobs.get("sides", 2))
            for pos, i in enumerate(order):
                groups[i] = pos * sides // n
        bridge = knobs.get("bridge", 0)
        if isinstance(bridge, list):
            for name in bridge:
                if name in self.index:
                    groups[self.index[name]] = BRIDGE
        elif bridge:
            for i in self.rng.sample(range(n), min(int(bridge), n)):
                groups[i] = BRIDGE
        self.net.partition(groups, oneway=bool(knobs.get("oneway", False)))
        self.net.changed_at = at
        self.partition_generation += 1
        gen = self.partition_generation
        if "flap_period_s" in knobs:
            self._push_disturbance(
                at + knobs["flap_period_s"], FAULT, -1, ("flap", gen, knobs["flap_period_s"])
            )
        if "heal_after_s" in knobs:
            self._push_disturbance(at + knobs["heal_after_s"], FAULT, -1, ("heal", gen))

    def _heal(self, at: float) -> None:
        self.net.heal()
        self.net.changed_at = at
        self.partition_generation += 1
        self.metrics.heals.append([at, math.nan])

    # -- convergence ---------------------------------------------------------------------------

    def _roots_agree(self) -> bool:
        root: bytes | None = None
        for node in self.nodes:
            if node.up and not node.left:
                mine = node.log.digest.root()
                if root is None:
                    root = mine
                elif mine != root:
                    return False
        return root is not None

    def _check(self, at: float) -> None:
        m = self.metrics
        agree = self._roots_agree()
        self._trace(f"{at!r} C {int(agree)}")
        if agree:
            for heal in m.heals:
                if math.isnan(heal[1]):
                    heal[1] = at
            if m.settled_at is None:
                m.settled_at = at
            if (
                self.scenario.stop_when_settled
                and self.pending_disturbances == 0
                and at >= m.settled_at + self.scenario.settle_margin_s
            ):
                self._stop = True
        self._push(at + self.scenario.check_interval_s, CHECK, -1, None)

    # -- the end -------------------------------------------------------------------------------

    def _core_stats(self) -> dict[str, Any]:
        totals: dict[str, Any] = {}
        every = self.retired_stats + [n.core.stats for n in self.nodes if n.core is not None]
        for stats in every:
            if not dataclasses.is_dataclass(stats) or isinstance(stats, type):
                continue
            for f in dataclasses.fields(stats):
                value = getattr(stats, f.name)
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[f.name] = totals.get(f.name, 0) + value
                elif isinstance(value, dict):
                    into = totals.setdefault(f.name, {})
                    for key, count in value.items():
                        if isinstance(count, int):
                            into[key] = into.get(key, 0) + count
        return {
            k: (dict(sorted(v.items())) if isinstance(v, dict) else v)
            for k, v in sorted(totals.items())
        }

    def _finish(self, wall_s: float) -> RunResult:
        sc = self.scenario
        check_started = time.perf_counter()
        live = [n for n in self.nodes if n.live]
        roots = {n.log.digest.root() for n in live}
        with_state = [n for n in live if n.log.state is not None]
        hashes = {n.log.state.state_hash() for n in with_state if n.log.state is not None}
        check_wall_s = time.perf_counter() - check_started
        held = [n.log.digest for n in live]
        lost = sum(1 for op_id in self.metrics.op_index if not any(op_id in d for d in held))
        converged = bool(live) and len(roots) == 1 and len(hashes) <= 1
        sim_s = self.now
        m = self.metrics
        undetected = 0
        for crash in m.crashes:
            down_until = crash.restarted_at if crash.restarted_at is not None else sim_s
            if down_until - crash.at >= sc.check.detect_within_s and (
                crash.first_dead_at is None
                or crash.first_dead_at - crash.at > sc.check.detect_within_s
            ):
                undetected += 1
        rss_after = _rss_bytes()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        report: dict[str, Any] = {
            "scenario": sc.name,
            "core": self.spec.name,
            "nodes": len(self.nodes),
            "live_nodes": len(live),
            "seed": sc.seed,
            "converged": converged,
        }
        report.update(m.report(sim_s=sim_s, live_nodes=len(live), nodes=len(self.nodes)))
        report.update(
            {
                "crashes_undetected": undetected,
                "ops_lost": lost,
                "digest_roots_distinct": len(roots),
                "state_hashes_distinct": len(hashes),
                "state_hashes_checked": len(with_state),
                "dropped": {
                    "lost": self.net.dropped_lost,
                    "partition": self.net.dropped_partition,
                    "node_down": m.dropped_node_down,
                    "unknown_node": m.dropped_unknown,
                },
                "duplicated": self.net.duplicated,
                "ops_verified": len(self.verified),
                "events": self.events,
                "sim_s": round(sim_s, 3),
                "wall_s": round(wall_s, 3),
                # The final check (a state_hash per node) is not part of the simulation.
                "check_wall_s": round(check_wall_s, 3),
                "speed_factor": round(sim_s / wall_s, 2) if wall_s > 0 else None,
                "events_per_wall_s": round(self.events / wall_s) if wall_s > 0 else None,
                "memory_per_node_bytes": max(0, rss_after - self.rss_before)
                // max(len(self.nodes), 1),
                "memory_method": (
                    "process RSS growth from before the nodes were built to the end of the run, "
                    "divided by nodes (includes the shared op table, verification cache and metrics)"
                ),
                "peak_rss_bytes": peak,
                "bytes_source": SIZE_SOURCE,
                "core_stats": self._core_stats(),
                "network": sc.network.describe(),
                "trace_hash": self._trace_hash.hexdigest(),
            }
        )
        report = _json_safe(report)
        failures = self._failures(report)
        return RunResult(sc, self.spec.name, report, failures, m.cdf())

    def _failures(self, report: dict[str, Any]) -> list[str]:
        sc = self.scenario
        out: list[str] = []
        if sc.check.converged and not report["converged"]:
            out.append(
                f"not converged: {report['digest_roots_distinct']} distinct digest roots and "
                f"{report['state_hashes_distinct']} distinct state hashes over {report['live_nodes']} live nodes"
            )
        for name, bound in sorted(sc.check.max.items()):
            value = report.get(name)
            if value is None or value > bound:
                out.append(f"{name} = {value} is over the bound {bound:g}")
        for name, bound in sorted(sc.check.min.items()):
            value = report.get(name)
            if value is None or value < bound:
                out.append(f"{name} = {value} is under the bound {bound:g}")
        return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run_scenario(
    scenario: Scenario,
    core: CoreSpec,
    *,
    trace: IO[str] | None = None,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Build and run one simulation."""
    return Simulation(scenario, core, trace=trace, progress=progress).run()
