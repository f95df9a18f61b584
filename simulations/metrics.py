"""What a simulation run measured: propagation, traffic, convergence and failure detection.

Theory of operation
-------------------
The engine feeds ``Metrics`` as events happen; ``Metrics.report`` turns the counters into the
flat dict that ``formation-sim run --json`` prints. Definitions:

* **Propagation.** For every (op, node) pair, the virtual time from the op's creation at its
  origin to the moment the node first stored it. Pairs are counted for every node whose op log
  existed when the op was created (a node that joins later, or restarts with its disk lost,
  is catching up on history, not measuring propagation); the origin is not counted. Delays go
  into a 0.1 ms histogram, so p50/p99 are exact to 0.1 ms at O(1) memory per pair; the max is
  exact. Delays are computed in milliseconds, as ``at * 1000.0 - created * 1000.0`` from the
  engine's virtual seconds: the very values a ``--trace`` file records, so
  ``simulations.trace_metrics`` recomputes every figure here from the file alone, to the bit.
  ``time_to_99pct_ms``: per op, until 99 % of the nodes that were up when it was
  created held it (ops that never got there are counted in ``ops_not_reaching_99pct``). An op
  written again byte for byte is one op, timed from its first write (``ops_rewritten``).
* **Traffic.** Every ``Send`` of every kind is one message (``msgs_per_op`` = all sends of the
  run / ops written, background membership and anti-entropy included); bytes are
  ``simulations.sizes.packet_size``. ``msgs_per_op_maelstrom`` halves it: half of a
  Maelstrom broadcast test's ops are reads that send nothing, which is what its 3d/3e targets
  count. ``payload_copies_per_op``: op copies carried in ``Gossip`` messages per op (ideal:
  one per receiving node).
* **Convergence.** Every ``check_interval_s`` the engine compares digest roots of all live
  nodes. ``heal_converge_s``: from each heal to the first instant they agree. ``settle_s``:
  from the last disturbance (op written, fault, node start) to that instant.
* **Failure detection.** ``false_suspicions``: a ``Notify`` of ``suspect`` or ``dead`` about a
  node that was running and reachable both ways from the observer, and had been for a grace
  period (``check.suspicion_grace_s``, default 2 probe intervals + a probe timeout) since it
  last started and since the last partition change. A slow node counts as alive. ``dead_detect_s_*``: from a crash to the first ``dead`` report by any live node, and
  to the moment every live node had reported it.
* **Final check** (``converged``): every live node has the same digest root and, among the
  nodes that keep a ``State``, the same ``state_hash``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "HIST_RESOLUTION_MS",
    "METRIC_NAMES",
    "CrashRecord",
    "Metrics",
    "core_stats_totals",
    "json_safe",
    "percentile",
]

HIST_RESOLUTION_MS: Final = 0.1
_HIST_BUCKETS: Final = 600_000  # 60 s at 0.1 ms; later arrivals go to an overflow list
_BUCKETS_PER_MS: Final = 10  # 1 / HIST_RESOLUTION_MS, as an int (no float rounding)
_QUORUM: Final = 0.99

# Every numeric metric of the report, so a scenario's [check.max]/[check.min] can be validated.
METRIC_NAMES: Final = (
    "nodes",
    "live_nodes",
    "ops",
    "propagation_ms_p50",
    "propagation_ms_p99",
    "propagation_ms_max",
    "time_to_99pct_ms_p50",
    "time_to_99pct_ms_max",
    "ops_not_reaching_99pct",
    "msgs",
    "msgs_per_op",
    "msgs_per_op_maelstrom",
    "msgs_per_node_per_s",
    "bytes",
    "bytes_per_op",
    "bytes_per_node_per_s",
    "payload_copies_per_op",
    "heal_converge_s",
    "settle_s",
    "false_suspicions",
    "dead_detect_s_first_max",
    "dead_detect_s_all_max",
    "crashes_undetected",
    "ops_lost",
    "ops_rejected",
    "ops_deferred",
    "digest_roots_distinct",
    "state_hashes_distinct",
    "sim_s",
    "wall_s",
    "speed_factor",
    "memory_per_node_bytes",
)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan if empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class CrashRecord:
    node: int
    at: float
    restarted_at: float | None = None
    first_dead_at: float | None = None
    all_dead_at: float | None = None
    reporters: set[int] = field(default_factory=set)


class Metrics:
    """Counters the engine updates in its hot loop (plain attributes: cheap to bump)."""

    def __init__(self) -> None:
        # -- per op --
        self.op_index: dict[bytes, int] = {}
        self.op_created_ms: list[float] = []
        self.op_target: list[int] = []
        self.op_reached: list[int] = []
        self.op_t99_ms: list[float] = []
        self.hist: list[int] = [0] * _HIST_BUCKETS
        self.hist_overflow_ms: list[float] = []
        self.arrivals = 0
        self.delay_ms_max = 0.0
        # -- traffic --
        self.sends = 0
        self.bytes = 0
        self.messages_by_kind: dict[type, int] = {}
        self.payload_copies = 0
        self.dropped_node_down = 0
        self.dropped_unknown = 0
        # -- ops at the receivers --
        self.ops_rejected = 0
        self.ops_deferred = 0
        self.deliver_duplicates = 0
        self.ops_skipped = 0  # a write was due but no node was up
        self.ops_rewritten = 0  # a write produced an op that already existed
        # -- membership --
        self.notifies: dict[str, int] = {}
        self.false_suspicions = 0
        self.false_suspicion_examples: list[str] = []
        self.crashes: list[CrashRecord] = []
        # -- convergence --
        self.heals: list[list[float]] = []  # [heal_at, converged_at or nan]
        self.last_disturbance_at = 0.0
        self.settled_at: float | None = None

    # -- hot path ----------------------------------------------------------------------------

    def op_created(self, op_id: bytes, at: float, eligible: int) -> bool:
        """Count a written op; False if it already existed (then the writer is an arrival)."""
        if op_id in self.op_index:
            # The workload drew a byte-identical op again (same kind, user, name and HLC
            # stamp, at two nodes within a millisecond): it is the same op, already on its
            # way. Counting it twice split its arrivals between two entries, neither of
            # which then reached 99 % of the nodes (seeds 10, 20, 22, 34, 37 of broadcast-25).
            self.ops_rewritten += 1
            return False
        self.op_index[op_id] = len(self.op_created_ms)
        self.op_created_ms.append(at * 1000.0)
        self.op_target.append(math.ceil(_QUORUM * eligible))
        self.op_reached.append(0)
        self.op_t99_ms.append(0.0 if eligible == 0 else math.inf)
        return True

    def arrival(self, op_id: bytes, at: float, log_born_at: float) -> None:
        k = self.op_index.get(op_id)
        if k is None:
            return
        created_ms = self.op_created_ms[k]
        if created_ms < log_born_at * 1000.0:
            return
        delay = at * 1000.0 - created_ms  # ms, from the values a trace records
        self.arrivals += 1
        bucket = int(delay * _BUCKETS_PER_MS)
        if bucket < _HIST_BUCKETS:
            self.hist[bucket] += 1
        else:
            self.hist_overflow_ms.append(delay)
        if delay > self.delay_ms_max:
            self.delay_ms_max = delay
        reached = self.op_reached[k] + 1
        self.op_reached[k] = reached
        if reached == self.op_target[k]:
            self.op_t99_ms[k] = delay

    # -- summaries ---------------------------------------------------------------------------

    def _buckets_used(self) -> int:
        # Buckets past the largest delay are empty: walking all 600,000 of them cost ~20 ms a
        # run, a sixth of a smoke-5 seed (issue 14's 200-seed CI sweeps).
        return min(_HIST_BUCKETS, int(self.delay_ms_max * _BUCKETS_PER_MS) + 1)

    def propagation_ms(self, fraction: float) -> float:
        if not self.arrivals:
            return math.nan
        rank = max(1, math.ceil(fraction * self.arrivals))
        seen = 0
        for bucket, count in enumerate(self.hist[: self._buckets_used()]):
            seen += count
            if seen >= rank:
                return bucket * HIST_RESOLUTION_MS
        overflow = sorted(self.hist_overflow_ms)
        return overflow[rank - seen - 1]

    def cdf(self, points_max: int = 400) -> list[tuple[float, float]]:
        """(delay_ms, fraction of (op, node) pairs arrived by then), for plotting."""
        if not self.arrivals:
            return []
        out: list[tuple[float, float]] = []
        seen = 0
        step = max(1, self.arrivals // points_max)
        next_mark = step
        for bucket, count in enumerate(self.hist[: self._buckets_used()]):
            if not count:
                continue
            seen += count
            if seen >= next_mark or seen == self.arrivals:
                out.append(((bucket + 1) * HIST_RESOLUTION_MS, seen / self.arrivals))
                next_mark = seen + step
        for ms in sorted(self.hist_overflow_ms):
            seen += 1
            if seen >= next_mark or seen == self.arrivals:
                out.append((ms, seen / self.arrivals))
                next_mark = seen + step
        return out

    def report(self, *, sim_s: float, live_nodes: int, nodes: int) -> dict[str, Any]:
        ops = len(self.op_created_ms)
        t99 = sorted(t for t in self.op_t99_ms if math.isfinite(t))
        heal_times = [c - h for h, c in self.heals if math.isfinite(c)]
        first = [c.first_dead_at - c.at for c in self.crashes if c.first_dead_at is not None]
        every = [c.all_dead_at - c.at for c in self.crashes if c.all_dead_at is not None]
        per = max(ops, 1)
        node_s = max(live_nodes, 1) * max(sim_s, 1e-9)
        return {
            "ops": ops,
            "propagation_ms_p50": _round(self.propagation_ms(0.50)),
            "propagation_ms_p99": _round(self.propagation_ms(0.99)),
            "propagation_ms_max": _round(self.delay_ms_max if self.arrivals else math.nan),
            "time_to_99pct_ms_p50": _round(percentile(t99, 0.5)),
            "time_to_99pct_ms_max": _round(t99[-1] if t99 else math.nan),
            "ops_not_reaching_99pct": ops - len(t99),
            "msgs": self.sends,
            "msgs_per_op": _round(self.sends / per, 2),
            "msgs_per_op_maelstrom": _round(self.sends / per / 2, 2),
            "msgs_per_node_per_s": _round(self.sends / node_s, 2),
            "messages_by_kind": {
                t.__name__: n
                for t, n in sorted(self.messages_by_kind.items(), key=lambda kv: kv[0].__name__)
            },
            "bytes": self.bytes,
            "bytes_per_op": _round(self.bytes / per, 1),
            "bytes_per_node_per_s": _round(self.bytes / node_s, 1),
            "payload_copies_per_op": _round(self.payload_copies / per, 2),
            "heal_converge_s": _round(max(heal_times), 3) if heal_times else None,
            "heals_not_converged": sum(1 for _, c in self.heals if not math.isfinite(c)),
            "settle_s": (
                _round(self.settled_at - self.last_disturbance_at, 3)
                if self.settled_at is not None
                else None
            ),
            "notifies": dict(sorted(self.notifies.items())),
            "false_suspicions": self.false_suspicions,
            "false_suspicion_examples": self.false_suspicion_examples,
            "crashes": len(self.crashes),
            "dead_detect_s_first_max": _round(max(first), 3) if first else None,
            "dead_detect_s_all_max": _round(max(every), 3) if every else None,
            "ops_rejected": self.ops_rejected,
            "ops_deferred": self.ops_deferred,
            "ops_skipped": self.ops_skipped,
            "ops_rewritten": self.ops_rewritten,
            "deliver_duplicates": self.deliver_duplicates,
        }


def _round(value: float, digits: int = 1) -> float:
    return value if not math.isfinite(value) else round(value, digits)


def core_stats_totals(every: Iterable[Any]) -> dict[str, Any]:
    """The cores' stats dataclasses summed field by field (ints, and dicts of ints by key), for
    ``core_stats`` in the report: every core the run had, the crashed and departed ones too."""
    totals: dict[str, Any] = {}
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


def json_safe(value: Any) -> Any:
    """``value`` with every NaN and infinity (nested in dicts and lists) as None: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
