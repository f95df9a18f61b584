"""A placement run: many hosts, lagging capacity views, the real placement core, an oracle.

Long on purpose: one event loop whose handlers share the hosts, requests and views, with the checker and the oracle that judge it on the same inputs beside it.

Theory of operation
-------------------
Every node is a host with a ``node.placement.core.HostBook`` (the real class: the host is the
only authority over its capacity) and is also a placer: each instance request is taken by a
random live node, which runs a ``node.placement.core.SlotPlacement`` (the real class, never a
copy) against *its own* view of the fog's capacity. Everything is an event in one heap ordered
by (virtual time, sequence), drawn from seeded rngs, so a run is a pure function of (scenario,
seed, code) and ``trace_hash`` proves it.

**Views lag.** Each host reports its free every ``heartbeat_ms`` (random phase). A report
reaches node *v* ``gossip_ms_min..gossip_ms_max`` after it was made, a delay fixed per
(viewer, host) pair, so no two nodes see quite the same fog. Node *v*'s view of host *h* is
*h*'s latest report that has reached *v* (unknown: zero, fits nothing). Views are computed when
read (``_View``), never copied: a 1,000-node fog would otherwise cost a million updates per
heartbeat round. A host declared dead (silent ``dead_after_ms``) leaves every view; one that
restarts comes back with its first report.

**Asks travel.** Ask, answer and release messages go through ``simulations.network`` (the
scenario's ``[network]``: latency, loss, duplicates). A host answers asks one at a time in
arrival order with ``HostBook.offer``; a placer feeds the answer to its ``SlotPlacement``. An
acceptance the placement no longer wants (it timed out and moved on, or a duplicate arrived
after the instance ended) is released at once; a timed-out ask is released too in case only
the answer was lost. An instance lives an exponential lifetime from its ``Done``, then its
slot is released.

**Hosts die.** ``crash`` and ``churn`` faults stop a host: its book and VMs are gone. After
``dead_after_ms`` the fog declares it dead and every instance that was running there and has
life left is rescheduled by a random live node (a new ``SlotPlacement`` excluding the dead
host, attempts numbered on): ``rescheduled`` counts the ones placed again. (A placer's own
death is not modelled: in the node the placement lives in the replicated request, which
another node can pick up.)

**The checker** (``_Checker``) is independent of ``HostBook``: it sums, per host, the needs of
the slots the host's answers accepted and the releases it processed, and counts every moment a
sum exceeds the host's total (``double_bookings``, which must be 0).

**The oracle** (``_oracle``) replays the same requests, lifetimes and host deaths through a
central best-fit scheduler that sees every host's true free instantly (least vCPU left that
fits, hosts without GPUs first for requests without GPUs). ``oracle_gap`` =
``(oracle_placed - placed) / oracle_placed`` over the first placements of requests (not
reschedules): how many of the placements a perfect central scheduler would make the
decentralized one misses (negative: it made more).

Metrics (``--json``): ``requests``, ``placements`` (requests Done), ``placements_per_s``
(placements / request window, virtual), ``wall_s``, ``placements_per_wall_s``,
``double_bookings``, ``oracle_gap``, ``oracle_placed``, ``refusals``, ``retries`` (asks after
a request's first), ``timeouts``, ``rescheduled``, ``reschedule_failed``, ``unplaceable``
(requests that got a ``Fail``), ``fails_without_largest_free`` (a ``Fail`` whose message does
not name the largest free slot: must be 0), ``unresolved`` (neither Done nor Fail at the end),
``p50_place_ms``/``p99_place_ms``/``max_place_ms`` (virtual time from request to Done),
``asks_per_placement``, ``utilization``/``oracle_utilization`` (committed vCPU over live vCPU,
mean over the second half of the request window), ``offered_load``.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import IO, Any, Final

from node.placement.core import Ask, Done, Fail, HostBook, Resources, SlotPlacement
from simulations import invariants
from simulations.metrics import json_safe, percentile
from simulations.network import Network
from simulations.placement_spec import PlacementSpec
from simulations.report import RunResult
from simulations.scenario import Fault, Scenario

__all__ = ["PLACEMENT_CORE", "PlacementSim", "finish", "run_placement", "simulate"]

PLACEMENT_CORE: Final = "placement"
_ZERO: Final = Resources()
_MSG_BYTES: Final = 256
_SAMPLE_MS: Final = 250.0
# Event kinds (the heap holds (at_ms, seq, kind, a, b)).
_HEARTBEAT, _ARRIVE, _ASK, _ANSWER, _TIMER, _RELEASE, _END, _CRASH, _RESTART, _DETECT = range(10)
_SAMPLE = 10

ProgressFn = Callable[[float, float], None]


class _Host:
    __slots__ = ("book", "id", "inc", "index", "reports", "residents", "total", "up")

    def __init__(self, index: int, total: Resources, reports_max: int) -> None:
        self.index = index
        self.id = f"n{index}"
        self.total = total
        self.book: HostBook | None = HostBook(total)
        self.up = True
        self.inc = 0
        self.reports: deque[tuple[float, Resources]] = deque(maxlen=reports_max)
        self.residents: dict[int, None] = {}  # requests whose instance runs here now


class _Req:
    __slots__ = (
        "arrive_ms",
        "done_attempt",
        "done_ms",
        "end_ms",
        "ended",
        "host",
        "index",
        "key",
        "lifetime_ms",
        "need",
        "outcome",
        "placement",
        "placer",
        "rescheduling",
        "timer_at",
    )

    def __init__(self, index: int, arrive_ms: float, need: Resources, lifetime_ms: float) -> None:
        self.index = index
        self.key = f"{index:032x}-0"
        self.arrive_ms = arrive_ms
        self.need = need
        self.lifetime_ms = lifetime_ms
        self.placer = -1
        self.placement: SlotPlacement | None = None
        self.host: int | None = None
        self.done_attempt = 0
        self.done_ms = math.nan
        self.end_ms = math.inf
        self.ended = False
        self.outcome = ""  # "" pending, "done", "fail"
        self.rescheduling = False
        self.timer_at = -1.0


class _View(Mapping[str, Resources]):
    """Node ``viewer``'s view at ``now_ms``: each live host's latest report that reached it."""

    __slots__ = ("_now", "_sim", "_viewer")

    def __init__(self, sim: PlacementSim, viewer: int, now_ms: float) -> None:
        self._sim = sim
        self._viewer = viewer
        self._now = now_ms

    def __getitem__(self, node: str) -> Resources:
        sim = self._sim
        host = sim.hosts[sim.index[node]]
        lag = sim.lag_ms(self._viewer, host.index)
        now = self._now
        for at, free in reversed(host.reports):
            if at + lag <= now:
                return free
        return _ZERO

    def __iter__(self) -> Iterator[str]:
        return iter(self._sim.alive_ids)

    def __len__(self) -> int:
        return len(self._sim.alive_ids)


class _Checker:
    """Per host: the sum of live accepted slots, from the answers alone, against the total."""

    def __init__(self, hosts: list[_Host]) -> None:
        self.totals = [h.total for h in hosts]
        self.held: list[dict[str, Resources]] = [{} for _ in hosts]
        self.sums: list[list[int]] = [[0, 0, 0, 0] for _ in hosts]
        self.violations = 0
        self.vcpus_committed = 0

    def accepted(self, host: int, key: str, need: Resources) -> None:
        held = self.held[host]
        if key in held:
            return  # the host answered the same ask again: one slot
        held[key] = need
        s = self.sums[host]
        s[0] += need.vcpus
        s[1] += need.memory_mb
        s[2] += need.disk_gb
        s[3] += need.gpus
        self.vcpus_committed += need.vcpus
        t = self.totals[host]
        if s[0] > t.vcpus or s[1] > t.memory_mb or s[2] > t.disk_gb or s[3] > t.gpus:
            self.violations += 1

    def released(self, host: int, key: str) -> None:
        need = self.held[host].pop(key, None)
        if need is not None:
            s = self.sums[host]
            s[0] -= need.vcpus
            s[1] -= need.memory_mb
            s[2] -= need.disk_gb
            s[3] -= need.gpus
            self.vcpus_committed -= need.vcpus

    def crashed(self, host: int) -> None:
        self.vcpus_committed -= self.sums[host][0]
        self.held[host].clear()
        self.sums[host] = [0, 0, 0, 0]


def _weighted(rng: random.Random, values: tuple[int, ...], weights: tuple[float, ...]) -> int:
    return rng.choices(values, weights)[0]


def _hosts(spec: PlacementSpec, n: int, rng: random.Random) -> list[_Host]:
    reports_max = math.ceil(spec.gossip_ms_max / spec.heartbeat_ms) + 2
    hosts = []
    for i in range(n):
        v = _weighted(rng, spec.host_vcpus, spec.host_weights)
        gpus = spec.gpus_per_host if v >= 16 and rng.random() < spec.gpu_host_ratio else 0
        total = Resources(v, v * spec.host_memory_mb_per_vcpu, v * spec.host_disk_gb_per_vcpu, gpus)
        hosts.append(_Host(i, total, reports_max))
    return hosts


def _mean(values: tuple[int, ...] | tuple[float, ...], weights: tuple[float, ...]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def _arrival_rate(spec: PlacementSpec, hosts: list[_Host]) -> float:
    """Requests per second that offer ``load`` on the busiest dimension (Little's law)."""
    lifetime_s = spec.lifetime_s_min + spec.lifetime_s_mean * math.exp(
        -spec.lifetime_s_min / spec.lifetime_s_mean
    )
    v = _mean(spec.request_vcpus, spec.request_weights)
    even = tuple(1.0 for _ in spec.request_memory_mb_per_vcpu)
    demand = (
        v,
        v * _mean(spec.request_memory_mb_per_vcpu, even),
        v * _mean(spec.request_disk_gb_per_vcpu, tuple(1.0 for _ in spec.request_disk_gb_per_vcpu)),
        spec.request_gpu_ratio,
    )
    capacity = (
        sum(h.total.vcpus for h in hosts),
        sum(h.total.memory_mb for h in hosts),
        sum(h.total.disk_gb for h in hosts),
        sum(h.total.gpus for h in hosts),
    )
    per_s = min(c / (d * lifetime_s) for c, d in zip(capacity, demand, strict=True) if d > 0 < c)
    return spec.load * per_s


def _requests(spec: PlacementSpec, rate: float, rng: random.Random) -> list[_Req]:
    out: list[_Req] = []
    t_ms = spec.start_s * 1000.0
    stop_ms = spec.stop_s * 1000.0
    while rate > 0:
        t_ms += rng.expovariate(rate) * 1000.0
        if t_ms >= stop_ms:
            break
        v = _weighted(rng, spec.request_vcpus, spec.request_weights)
        need = Resources(
            v,
            v * rng.choice(spec.request_memory_mb_per_vcpu),
            v * rng.choice(spec.request_disk_gb_per_vcpu),
            1 if rng.random() < spec.request_gpu_ratio else 0,
        )
        lifetime_s = max(spec.lifetime_s_min, rng.expovariate(1.0 / spec.lifetime_s_mean))
        out.append(_Req(len(out), t_ms, need, lifetime_s * 1000.0))
    return out


def _select(fault: Fault, up: list[int], rng: random.Random) -> list[int]:
    knobs = fault.knobs
    if "nodes" in knobs:
        wanted = {int(name[1:]) for name in knobs["nodes"]}
        return [i for i in up if i in wanted]
    if "count" in knobs:
        return sorted(rng.sample(up, min(int(knobs["count"]), len(up))))
    if "fraction" in knobs:
        return sorted(rng.sample(up, min(len(up), round(float(knobs["fraction"]) * len(up)))))
    return list(up)


def _fault_timeline(
    faults: tuple[Fault, ...], n: int, rng: random.Random
) -> list[tuple[float, int, int]]:
    """(at_ms, _CRASH | _RESTART, host) for the run, decided up front (the oracle replays it)."""
    ticks: list[tuple[float, float, Fault]] = []  # (at_ms, down_ms or inf, fault)
    for fault in faults:
        if fault.action == "crash":
            down = fault.knobs.get("restart_after_s")
            ticks.append((fault.at_s * 1000.0, down * 1000.0 if down else math.inf, fault))
        else:  # churn
            t = fault.at_s
            while t < fault.knobs["until_s"]:
                ticks.append((t * 1000.0, fault.knobs["down_s"] * 1000.0, fault))
                t += fault.knobs["interval_s"]
    ticks.sort(key=lambda x: x[0])
    down_until = [0.0] * n
    out: list[tuple[float, int, int]] = []
    for at, down_ms, fault in ticks:
        up = [i for i in range(n) if down_until[i] <= at]
        for host in _select(fault, up, rng):
            down_until[host] = at + down_ms
            out.append((at, _CRASH, host))
            if down_ms < math.inf:
                out.append((at + down_ms, _RESTART, host))
    # At one instant a restart goes first: the host was picked as up at that instant.
    out.sort(key=lambda e: (e[0], e[1] != _RESTART, e[2]))
    return out


class PlacementSim:
    """One placement run: hosts, requests (``reqs``: outcome, placement, host), the event loop."""

    def __init__(self, scenario: Scenario, trace: IO[str] | None) -> None:
        spec = scenario.placement
        assert spec is not None
        self.spec = spec
        self.scenario = scenario
        master = random.Random(scenario.seed)
        streams = [random.Random(master.getrandbits(64)) for _ in range(6)]
        rng_hosts, rng_req, rng_faults, rng_net, self.rng_place, self.rng_placer = streams
        self.hosts = _hosts(spec, scenario.nodes, rng_hosts)
        self.index = {h.id: h.index for h in self.hosts}
        self.alive_ids = [h.id for h in self.hosts]
        self.up_list = [h.index for h in self.hosts]
        self.rate = _arrival_rate(spec, self.hosts)
        self.reqs = _requests(spec, self.rate, rng_req)
        self.timeline = _fault_timeline(scenario.faults, len(self.hosts), rng_faults)
        self.net = Network(scenario.network, rng_net, len(self.hosts))
        self.checker = _Checker(self.hosts)
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.events = 0
        self.wall_s = 0.0
        self.trace = trace
        self.digest = hashlib.blake2b(digest_size=16)
        self.span_ms = spec.gossip_ms_max - spec.gossip_ms_min
        self.c: dict[str, int] = dict.fromkeys(
            (
                "refusals",
                "retries",
                "timeouts",
                "asks",
                "rescheduled",
                "reschedule_failed",
                "reschedules_started",
                "late_accepts_released",
                "crashes",
                "restarts",
                "fails_without_largest_free",
            ),
            0,
        )
        self.util: list[float] = []
        for req in self.reqs:
            self.push(req.arrive_ms, _ARRIVE, req.index, None)
        for at, kind, host in self.timeline:
            self.push(at, kind, host, None)
        for h in self.hosts:
            # The fog was up before the first request: every view already knows every host.
            h.reports.append((-float(spec.gossip_ms_max), h.total))
            self.push(self.rng_place.uniform(0.0, spec.heartbeat_ms), _HEARTBEAT, h.index, None)
        self.push(_SAMPLE_MS, _SAMPLE, -1, None)

    def push(self, at: float, kind: int, a: int, b: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, a, b))

    def lag_ms(self, viewer: int, host: int) -> float:
        # Fixed per (viewer, host) pair and cheap: an integer hash, not Python's hash().
        h = (viewer * 2654435761 + host * 40503) % 1009
        return self.spec.gossip_ms_min + self.span_ms * h / 1008.0

    def record(self, line: str) -> None:
        self.digest.update(line.encode())
        self.digest.update(b"\n")
        if self.trace is not None:
            self.trace.write(line + "\n")

    def send(self, src: int, dst: int, kind: int, a: int, b: Any) -> None:
        now_s = self.now / 1000.0
        at = self.net.route(src, dst, now_s, _MSG_BYTES)
        if at >= 0:
            self.push(at * 1000.0, kind, a, b)
            again = self.net.duplicate(src, dst, now_s)
            if again >= 0:
                self.push(again * 1000.0, kind, a, b)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, progress: ProgressFn | None) -> None:
        duration_ms = self.scenario.duration_s * 1000.0
        heap = self.heap
        pop = heapq.heappop
        handlers = (
            self._heartbeat,
            self._arrive,
            self._ask,
            self._answer,
            self._timer,
            self._release,
            self._end,
            self._crash,
            self._restart,
            self._detect,
            self._sample,
        )
        while heap:
            at, _, kind, a, b = pop(heap)
            if at > duration_ms:
                break
            self.now = at
            self.events += 1
            handlers[kind](a, b)
            if progress is not None and self.events % 4096 == 0:
                progress(at / 1000.0, duration_ms / 1000.0)

    def _heartbeat(self, host: int, _: Any) -> None:
        h = self.hosts[host]
        if h.up and h.book is not None:
            h.reports.append((self.now, h.book.free))
        self.push(self.now + self.spec.heartbeat_ms, _HEARTBEAT, host, None)

    def _sample(self, _a: int, _b: Any) -> None:
        spec = self.spec
        t_s = self.now / 1000.0
        if (spec.start_s + spec.stop_s) / 2 <= t_s < spec.stop_s:
            live = sum(self.hosts[i].total.vcpus for i in self.up_list)
            self.util.append(self.checker.vcpus_committed / live if live else 0.0)
        self.push(self.now + _SAMPLE_MS, _SAMPLE, -1, None)

    def _start(self, req: _Req, placement: SlotPlacement) -> None:
        req.placement = placement
        req.placer = self.up_list[self.rng_placer.randrange(len(self.up_list))]
        view = _View(self, req.placer, self.now)
        self._act(req, placement.start(view, int(self.now), self.rng_place))

    def _arrive(self, index: int, _: Any) -> None:
        req = self.reqs[index]
        if not self.up_list:
            self._act(req, Fail("no node offers VMs", None, ()))
            return
        s = self.spec
        self._start(
            req,
            SlotPlacement(
                req.key,
                req.need,
                attempts_max=s.attempts_max,
                answer_timeout_ms=s.answer_timeout_ms,
                policy=s.policy,
                choices=s.choices,
            ),
        )

    def _act(self, req: _Req, out: Ask | Done | Fail) -> None:
        if isinstance(out, Ask):
            self.c["asks"] += 1
            host = self.index[out.host]
            self.send(req.placer, host, _ASK, req.index, (host, out.attempt))
            p = req.placement
            assert p is not None
            assert p.next_wakeup_ms is not None
            req.timer_at = float(p.next_wakeup_ms)
            self.push(req.timer_at, _TIMER, req.index, req.timer_at)
            return
        p = req.placement
        if p is not None:
            self.c["refusals"] += p.refusals
            self.c["retries"] += p.retries
            self.c["timeouts"] += p.timeouts
        rescheduling = req.rescheduling
        req.rescheduling = False
        if isinstance(out, Done):
            host = self.index[out.host]
            req.host = host
            req.done_attempt = out.attempt
            if rescheduling:
                self.c["rescheduled"] += 1
            else:
                req.outcome = "done"
                req.done_ms = self.now
                req.end_ms = self.now + req.lifetime_ms
                self.push(req.end_ms, _END, req.index, None)
            self.hosts[host].residents[req.index] = None
            self.record(f"{self.now:.3f} done {req.index} {out.host} {out.attempt}")
            if req.ended:  # its life ran out while it was being rescheduled
                self._free(req)
            return
        if rescheduling:
            self.c["reschedule_failed"] += 1
        else:
            req.outcome = "fail"
        if "the largest free slot is" not in out.message and out.message != "no node offers VMs":
            self.c["fails_without_largest_free"] += 1
        self.record(f"{self.now:.3f} fail {req.index} {len(out.tried)}")

    def _ask(self, index: int, b: tuple[int, int]) -> None:
        host, attempt = b
        h = self.hosts[host]
        if not h.up or h.book is None:
            return  # a dead host answers nothing
        req = self.reqs[index]
        answer = h.book.offer(req.key, req.need)
        if answer.accepted:
            self.checker.accepted(host, req.key, req.need)
        self.send(host, req.placer, _ANSWER, index, (host, attempt, answer.accepted, answer.free))

    def _answer(self, index: int, b: tuple[int, int, bool, Resources]) -> None:
        host, attempt, accepted, free = b
        req = self.reqs[index]
        p = req.placement
        out = None
        if p is not None and p.result is None:
            view = _View(self, req.placer, self.now)
            out = p.on_answer(
                self.hosts[host].id, attempt, accepted, free, view, int(self.now), self.rng_place
            )
        if out is not None:
            self._act(req, out)
            return
        wanted = req.host == host and req.done_attempt == attempt and not req.ended
        if accepted and not wanted:
            # Room nobody will use: a late acceptance, or a duplicate after the instance ended.
            self.c["late_accepts_released"] += 1
            self.send(req.placer, host, _RELEASE, host, req.key)

    def _timer(self, index: int, at: float) -> None:
        req = self.reqs[index]
        p = req.placement
        if p is None or p.result is not None or at != req.timer_at:
            return
        silent = p.tried[-1] if p.tried else None
        out = p.on_timer(int(self.now), _View(self, req.placer, self.now), self.rng_place)
        if out is None:
            return
        if silent is not None:
            # Only the answer may have been lost: release, in case it was an acceptance.
            self.send(req.placer, self.index[silent], _RELEASE, self.index[silent], req.key)
        self._act(req, out)

    def _release(self, host: int, key: str) -> None:
        h = self.hosts[host]
        if h.up and h.book is not None and h.book.release(key):
            self.checker.released(host, key)

    def _free(self, req: _Req) -> None:
        if req.host is not None:
            self.hosts[req.host].residents.pop(req.index, None)
            self.send(req.placer, req.host, _RELEASE, req.host, req.key)
            req.host = None

    def _end(self, index: int, _: Any) -> None:
        req = self.reqs[index]
        req.ended = True
        self._free(req)

    def _crash(self, host: int, _: Any) -> None:
        h = self.hosts[host]
        if not h.up:
            return
        self.c["crashes"] += 1
        h.up = False
        h.book = None
        h.inc += 1
        # Its last reports stay in the views until it is declared dead: asks to it time out.
        self.checker.crashed(host)
        self.up_list = [i for i in self.up_list if i != host]
        victims = list(h.residents)
        h.residents.clear()
        for index in victims:
            self.reqs[index].host = None  # its VM died with the host
        self.record(f"{self.now:.3f} crash {h.id}")
        self.push(self.now + self.spec.dead_after_ms, _DETECT, host, victims)

    def _restart(self, host: int, _: Any) -> None:
        h = self.hosts[host]
        if h.up:
            return
        self.c["restarts"] += 1
        h.up = True
        h.book = HostBook(h.total)
        h.inc += 1
        h.reports.clear()
        self.up_list = sorted([*self.up_list, host])
        if h.id not in self.alive_ids:
            self.alive_ids.append(h.id)
        self.record(f"{self.now:.3f} restart {h.id}")

    def _detect(self, host: int, victims: list[int]) -> None:
        h = self.hosts[host]
        if not h.up and h.id in self.alive_ids:
            self.alive_ids.remove(h.id)
        s = self.spec
        for index in victims:
            req = self.reqs[index]
            if req.ended or req.host is not None or req.rescheduling or not self.up_list:
                continue
            old = req.placement
            assert old is not None
            req.rescheduling = True
            self.c["reschedules_started"] += 1
            self._start(
                req,
                SlotPlacement(
                    req.key,
                    req.need,
                    attempt_first=old.attempt + 1,
                    attempts_max=s.attempts_max,
                    answer_timeout_ms=s.answer_timeout_ms,
                    policy=s.policy,
                    choices=s.choices,
                    exclude=(h.id,),
                ),
            )


def _oracle(sim: PlacementSim) -> tuple[int, float]:
    """Central best fit on the same requests and deaths: (requests placed, utilization)."""
    spec = sim.spec
    hosts = sim.hosts
    n = len(hosts)
    totals = [h.total for h in hosts]
    free = list(totals)
    up = [True] * n
    vmax = max(t.vcpus for t in totals)
    buckets: list[dict[int, None]] = [{} for _ in range(vmax + 1)]
    for i, t in enumerate(totals):
        buckets[t.vcpus][i] = None
    gpu_host = [t.gpus > 0 for t in totals]
    residents: list[dict[int, None]] = [{} for _ in range(n)]
    where: dict[int, int] = {}
    committed = 0
    live_vcpus = sum(t.vcpus for t in totals)

    def move(h: int, new: Resources) -> None:
        del buckets[free[h].vcpus][h]
        free[h] = new
        buckets[new.vcpus][h] = None

    def place(need: Resources) -> int | None:
        passes = (True, False) if need.gpus == 0 else (False,)
        for avoid_gpus in passes:
            for v in range(need.vcpus, vmax + 1):
                for h in buckets[v]:
                    if avoid_gpus and gpu_host[h]:
                        continue
                    if need.fits(free[h]):
                        return h
        return None

    heap: list[tuple[float, int, int, int]] = []  # (at, order, kind, a)
    for req in sim.reqs:
        heap.append((req.arrive_ms, 2, _ARRIVE, req.index))
    for at, kind, host in sim.timeline:
        heap.append((at, 0 if kind == _RESTART else 1, kind, host))
    sample_ms = _SAMPLE_MS
    while sample_ms < spec.stop_s * 1000.0:
        heap.append((sample_ms, 2, _SAMPLE, -1))
        sample_ms += _SAMPLE_MS
    heapq.heapify(heap)
    placed = 0
    util: list[float] = []
    dead_victims: dict[int, list[int]] = {}
    while heap:
        at, _, kind, a = heapq.heappop(heap)
        if kind == _ARRIVE or kind == _DETECT + 100:
            req = sim.reqs[a]
            if kind == _DETECT + 100 and at >= req.arrive_ms + req.lifetime_ms:
                continue
            h = place(req.need)
            if h is None:
                continue
            if kind == _ARRIVE:
                placed += 1
                heapq.heappush(heap, (at + req.lifetime_ms, 0, _END, a))
            move(h, free[h] - req.need)
            committed += req.need.vcpus
            residents[h][a] = None
            where[a] = h
        elif kind == _END:
            h_end = where.pop(a, None)
            if h_end is not None:
                residents[h_end].pop(a, None)
                move(h_end, free[h_end] + sim.reqs[a].need)
                committed -= sim.reqs[a].need.vcpus
        elif kind == _CRASH and up[a]:
            up[a] = False
            live_vcpus -= totals[a].vcpus
            victims = list(residents[a])
            for index in victims:
                where.pop(index, None)
                committed -= sim.reqs[index].need.vcpus
            residents[a].clear()
            del buckets[free[a].vcpus][a]
            free[a] = totals[a]
            dead_victims[a] = victims
            for index in victims:
                heapq.heappush(heap, (at + spec.dead_after_ms, 3, _DETECT + 100, index))
        elif kind == _RESTART and not up[a]:
            up[a] = True
            live_vcpus += totals[a].vcpus
            buckets[free[a].vcpus][a] = None
        elif kind == _SAMPLE and (spec.start_s + spec.stop_s) / 2 <= at / 1000.0:
            util.append(committed / live_vcpus if live_vcpus else 0.0)
    return placed, (sum(util) / len(util) if util else math.nan)


def run_placement(
    scenario: Scenario,
    core_name: str = PLACEMENT_CORE,
    *,
    trace: IO[str] | None = None,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Run a scenario with a ``[placement]`` table; ``core_name`` only goes into ``reproduce``."""
    return finish(simulate(scenario, trace=trace, progress=progress), core_name)


def simulate(
    scenario: Scenario, *, trace: IO[str] | None = None, progress: ProgressFn | None = None
) -> PlacementSim:
    """Build and run the simulation; ``finish`` judges it (tests read ``sim.reqs`` between)."""
    started = time.perf_counter()
    sim = PlacementSim(scenario, trace)
    sim.run(progress)
    sim.wall_s = time.perf_counter() - started
    return sim


def finish(sim: PlacementSim, core_name: str = PLACEMENT_CORE) -> RunResult:
    """Run the oracle on the same inputs and build the report."""
    scenario = sim.scenario
    wall_s = sim.wall_s
    oracle_placed, oracle_util = _oracle(sim)
    spec = sim.spec
    reqs = sim.reqs
    done = [r for r in reqs if r.outcome == "done"]
    latencies = sorted(r.done_ms - r.arrive_ms for r in done)
    window_s = spec.stop_s - spec.start_s
    placed = len(done)
    c = sim.c
    report: dict[str, Any] = {
        "scenario": scenario.name,
        "core": PLACEMENT_CORE,
        "kind": "placement",
        "nodes": len(sim.hosts),
        "live_nodes": len(sim.up_list),
        "seed": scenario.seed,
        "policy": spec.policy,
        "choices": spec.choices,
        "requests": len(reqs),
        "placements": placed,
        "placements_per_s": round(placed / window_s, 1),
        "wall_s": round(wall_s, 3),
        "placements_per_wall_s": round(placed / wall_s, 1) if wall_s > 0 else None,
        "double_bookings": sim.checker.violations,
        "oracle_gap": round((oracle_placed - placed) / oracle_placed, 5) if oracle_placed else 0.0,
        "oracle_placed": oracle_placed,
        "refusals": c["refusals"],
        "retries": c["retries"],
        "timeouts": c["timeouts"],
        "rescheduled": c["rescheduled"],
        "reschedule_failed": c["reschedule_failed"],
        "reschedules_started": c["reschedules_started"],
        "unplaceable": sum(1 for r in reqs if r.outcome == "fail"),
        "fails_without_largest_free": c["fails_without_largest_free"],
        "unresolved": sum(1 for r in reqs if not r.outcome),
        "p50_place_ms": round(percentile(latencies, 0.5), 3),
        "p99_place_ms": round(percentile(latencies, 0.99), 3),
        "max_place_ms": round(latencies[-1], 3) if latencies else None,
        "asks_per_placement": round(c["asks"] / placed, 3) if placed else None,
        "late_accepts_released": c["late_accepts_released"],
        "utilization": round(sum(sim.util) / len(sim.util), 4) if sim.util else None,
        "oracle_utilization": round(oracle_util, 4),
        "offered_load": spec.load,
        "arrivals_per_s": round(sim.rate, 1),
        "crashes": c["crashes"],
        "restarts": c["restarts"],
        "events": sim.events,
        "sim_s": scenario.duration_s,
        "network": scenario.network.describe(),
    }
    host_only = ("wall_s", "placements_per_wall_s")
    sim.record(" ".join(f"{k}={v}" for k, v in report.items() if k not in host_only))
    report["trace_hash"] = sim.digest.hexdigest()
    report = json_safe(report)
    check = replace(scenario.check, converged=False)
    return RunResult(scenario, core_name, report, invariants.failures(check, report))
