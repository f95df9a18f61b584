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
    ``on_ops_accepted`` with the ops accepted; the effects that returns queue behind the rest, as
    in ``node.p2p.gossip_driver``. Verification (``admission.verify``: ``decode_op``,
    an ECDSA recovery of ~50 us, + ``State.check_op``) is **cached per run** by
    ``(body, sig)``, i.e. by op id + signature: every honest node would reach the same
    stateless verdict, so running it once per node would only make a 1,000-node run 1,000x
    slower without simulating anything more. Each node still stores and applies every op itself.
``Notify``
    recorded (false-suspicion and failure-detection metrics).

Timers: after every call the engine asks ``next_wakeup()`` and keeps one pending timer event
per node; a wake-up that moved makes the old event stale (it is skipped when popped).

A slow node handles each event ``delay_ms`` after the previous one finished; a node that is
down loses the packets that reach it and its timers. A node's log and clocks (a core's ``now``,
its wall clock, the memory the logs share): ``simulations.nodes``.

The engine is the event loop and the nodes' host (start, stop, effects, the workload).
``simulations.faults`` injects the scenario's faults through it, ``simulations.invariants``
says what must hold, and ``simulations.report`` builds what a run returns.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from typing import IO, Any, Final

from node.gossip.messages import Deliver, Gossip, Notify, Packet, Send, WireOp
from node.ledger.admission import Checked, SubmitResult, Verdict, accept, admit, own, verify
from simulations import invariants, report
from simulations.cores import CoreSpec
from simulations.faults import Faults
from simulations.metrics import METRIC_NAMES, Metrics
from simulations.network import Network
from simulations.nodes import CORE_CLOCK_ORIGIN_S as CORE_CLOCK_ORIGIN_S
from simulations.nodes import NETWORK_ID as NETWORK_ID
from simulations.nodes import T0_MS as T0_MS
from simulations.nodes import SimLog as SimLog
from simulations.nodes import SimNode as SimNode
from simulations.report import RunResult as RunResult
from simulations.runs import special_run
from simulations.scenario import Scenario
from simulations.sizes import WIRE_CHECK_EVERY, packet_size, wire_size
from simulations.trace import CHUNK as _TRACE_CHUNK
from simulations.trace import Tracer, trace_header
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

_SKEW_S_MAX: Final = 3_600.0

# Event kinds (the order only matters for trace lines; seq orders events).
PACKET: Final = 0
TIMER: Final = 1
OP: Final = 2
START: Final = 3
FAULT: Final = 4
CHECK: Final = 5
# Packets this big are always checked against node.gossip.wire (its limits: 4 MiB, 1,024).
_WIRE_CHECK_BYTES: Final = 256 * 1024
_WIRE_CHECK_MESSAGES: Final = 256
# A core whose next_wakeup() does not move past `now` would spin the engine forever.
_SAME_INSTANT_TIMERS_MAX: Final = 10_000

ProgressFn = Callable[[float, float], None]


class SimError(RuntimeError):
    """The simulated system broke a rule of the driver API (a core bug), or the run could not
    proceed; the message says which node, when, and how to reproduce."""


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
        self.progress = progress
        self.rng = random.Random(scenario.seed)
        rng = self.rng
        self.net = Network(scenario.network, random.Random(rng.getrandbits(64)), 0)
        w = scenario.workload
        self.workload = Workload(
            random.Random(rng.getrandbits(64)), NETWORK_ID, users=w.users, nodes=w.authors_nodes
        )
        self.metrics = Metrics()
        self.faults = Faults(self)
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.events = 0
        self.pending_disturbances = 0
        self.wires: dict[bytes, WireOp] = {}
        self.verified: dict[WireOp, Verdict] = {}
        self.nodes: list[SimNode] = []
        self.index: dict[str, int] = {}
        self.up_nodes: list[int] = []  # sorted indices of live nodes (workload origins)
        self.retired_stats: list[Any] = []
        self.tracer = Tracer(trace, trace_header(scenario, core.name))
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
        # The node whose effects handle() is performing, and the effects still to perform.
        self._handling: SimNode | None = None
        self._pending: list[Any] = []
        self.rss_before = report.rss_bytes()
        state_all = scenario.state_nodes is None or scenario.state_nodes >= scenario.nodes
        keep = (
            set(range(scenario.nodes))
            if state_all
            else set(rng.sample(range(scenario.nodes), scenario.state_nodes or 0))
        )
        self.state_for_joiners = state_all
        for i in range(scenario.nodes):
            self.add_node(i in keep)
        for node in self.nodes:
            start_at = rng.uniform(0.0, scenario.join_spread_s) if scenario.join_spread_s else 0.0
            self._push_disturbance(start_at, START, node.index, None)
        self._schedule_workload_first()
        for fault in scenario.faults:
            self.push_fault(fault.at_s, fault)
        self._push(scenario.check_interval_s, CHECK, -1, None)

    # -- scheduling ----------------------------------------------------------------------------

    def _push(self, at: float, kind: int, node: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, node, payload))

    def _push_disturbance(self, at: float, kind: int, node: int, payload: Any) -> None:
        self.pending_disturbances += 1
        self._push(at, kind, node, payload)

    def push_fault(self, at: float, fault: Any) -> None:
        """Schedule a fault (``simulations.faults``): a scenario's, or one a fault scheduled."""
        self._push_disturbance(at, FAULT, -1, fault)

    def add_node(self, keep_state: bool) -> SimNode:
        index = len(self.nodes)
        skew_max_s = self.scenario.clock_skew_ms_max / 1000.0
        skew = self.rng.uniform(-skew_max_s, skew_max_s) if skew_max_s else 0.0
        if abs(skew) > _SKEW_S_MAX:
            raise SimError(f"clock_skew_ms_max is over {_SKEW_S_MAX * 1000:g} ms; use less")
        log = SimLog(self.wires, self.now, keep_state=keep_state)
        node = SimNode(index, log, CORE_CLOCK_ORIGIN_S + skew, keep_state)
        if self.tracer.on:
            self.tracer.log_born(index, self.now)
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
        lines = self.tracer.lines
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
                        self.handle(node, at, effects)
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
                    self.handle(node, at, effects)
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
                    self.start(nodes[idx], at)
                else:
                    self.faults.apply(at, payload)
            if len(lines) >= _TRACE_CHUNK:
                self.tracer.flush()
                if progress is not None:
                    progress(at, duration)
        self.tracer.close(self.events)
        if not self._stop:
            self.now = max(self.now, duration)
        wall_s = time.perf_counter() - started
        return report.finish(self, wall_s)

    def _blame(self, node: SimNode, what: str) -> str:
        return (
            f"node {node.node_id} at t={self.now:.6f}s: {what}. "
            f"Reproduce: formation-sim run {report.scenario_arg(self.scenario)} "
            f"--nodes {self.scenario.nodes} --seed {self.scenario.seed} --core {self.spec.name}"
        )

    # -- effects -------------------------------------------------------------------------------

    def handle(self, node: SimNode, at: float, effects: list[Any]) -> None:
        """Perform a core's effects in order. Effects it returns meanwhile (``on_ops_accepted``
        after a ``Deliver``) queue behind them, as in ``node.p2p.gossip_driver``'s one list."""
        if self._handling is not None:
            assert self._handling is node
            self._pending.extend(effects)
            return
        self._handling = node
        pending = self._pending = list(effects)
        i = 0
        while i < len(pending):
            effect = pending[i]
            i += 1
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
        self._handling = None

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
        if self.tracer.on:
            self.tracer.deliveries(node.index, at, result)
        core = node.core
        assert core is not None
        effects = core.on_ops_accepted(at + node.clock_s, accepted, deliver.sender)
        if effects:
            self.handle(node, at, effects)

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

    def start(self, node: SimNode, at: float, *, incarnation: int = 0) -> None:
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
        self.set_up(node.index, True)
        effects = node.core.start(at + node.clock_s, self._seeds_for(node))
        self.trace(f"{at!r} S {node.index} {incarnation} {len(effects)}")
        if effects:
            self.handle(node, at, effects)
        self._rearm(node, at)

    def stop(self, node: SimNode) -> None:
        """Take a node down (a crash, a leave): its core, timer and events in flight are gone."""
        if node.core is not None:
            self.retired_stats.append(node.core.stats)
        node.up = False
        node.core = None
        node.timer_at = math.inf
        self.set_up(node.index, False)

    def set_up(self, index: int, up: bool) -> None:
        ups = self.up_nodes
        if up:
            if index not in ups:
                ups.append(index)
                ups.sort()
        elif index in ups:
            ups.remove(index)

    def trace(self, line: str) -> None:
        self.tracer.lines.append(line)

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
            self.trace(f"{at!r} O - skipped")
            return
        node = self.nodes[ups[self.rng.randrange(len(ups))]]
        clock = node.hlc.now(node.wall_ms(at))
        op, payload = own(self.workload.op(clock[0], clock[1]))
        self.wires[op.id] = (op.body, op.sig)
        added = node.log.add(op, payload)
        if self.tracer.on:
            self.tracer.write(op.id, node.index, at, len(ups) - 1)
        if not self.metrics.op_created(op.id, at, len(ups) - 1) and added:
            # The same op written again elsewhere: this writer holds it from now on.
            self.metrics.arrival(op.id, at, node.log.born_at)
            if self.tracer.on:
                self.tracer.deliver(op.id, node.index, at, True)
        core = node.core
        assert core is not None
        effects = core.broadcast(at + node.clock_s, [op])
        self.trace(f"{at!r} O {node.index} {op.id.hex()[:16]} {len(effects)}")
        if effects:
            self.handle(node, at, effects)
        self._rearm(node, at)

    # -- convergence ---------------------------------------------------------------------------

    def _check(self, at: float) -> None:
        m = self.metrics
        agree = invariants.roots_agree(self.nodes)
        self.trace(f"{at!r} C {int(agree)}")
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


def run_scenario(
    scenario: Scenario,
    core: CoreSpec,
    *,
    trace: IO[str] | None = None,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Build and run one simulation (``[placement]`` and ``[mesh]`` scenarios run their own)."""
    if (special := special_run(scenario)) is not None:
        return special(scenario, core.name, trace=trace, progress=progress)
    return Simulation(scenario, core, trace=trace, progress=progress).run()
