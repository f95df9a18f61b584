"""Recompute a gossip run's propagation figures from its ``--trace`` file alone.

```
python -m simulations.trace_metrics FILE     # one JSON object on stdout
```

Theory of operation
-------------------
The file is JSON lines (``docs/formats.md``, "Simulation trace"; ``simulations.trace``). One
pass, in file order, with state per op and per node only (memory does not grow with the
number of deliveries):

* ``l`` (a node's op log began at ``t_ms``) sets that node's log birth;
* ``w`` makes an op known, timed from its first write; its target is ``ceil(0.99 *
  peers_up)`` arrivals (an op written again later is the same op: the later ``w`` is ignored);
* ``d`` with ``first: true`` of a known op, at a node whose log began no later than the op was
  written, is one arrival: delay ``t_ms - written t_ms``; the arrival that meets the op's
  target is its time to 99 %.

Delays are binned at 0.1 ms (``int(delay * 10)``, the bin's lower edge is the value; delays
of 60 s or more kept exact) and p50/p99 are nearest-rank over all arrivals; the max is exact;
``time_to_99pct_ms_p50`` is nearest-rank over the ops that got there. Everything is rounded to
0.1 ms, and absent figures are null, as ``formation-sim run --json`` prints them
(``simulations.metrics``), so the two agree exactly. The ``e`` lines are hashed as the run
hashed them, so ``trace_hash_ok`` says the events in the file are the run's.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

__all__ = ["TraceError", "figures", "main", "read_trace"]

_BINS_PER_MS: Final = 10
_BINS_MAX: Final = 600_000  # 60 s; later delays are kept exact
_QUORUM: Final = 0.99


class TraceError(ValueError):
    """The file is not a formation-sim trace, or is cut short; the message says where."""


def read_trace(path: str) -> Iterator[dict[str, Any]]:
    """The records of a trace file, one at a time."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(record, dict) or "k" not in record:
                raise TraceError(f'{path}:{number}: not a trace record (no "k")')
            yield record


def _nearest_rank(counts: Counter[int], over: list[float], total: int, fraction: float) -> float:
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bin_ in sorted(counts):
        seen += counts[bin_]
        if seen >= rank:
            return bin_ * 0.1
    return sorted(over)[rank - seen - 1]


def _r(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 1)


def figures(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The propagation figures of the run the records came from (see the module docstring)."""
    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    born_ms: dict[int, float] = {}
    ops: dict[str, list[float]] = {}  # op -> [written t_ms, target, reached, t99 ms]
    counts: Counter[int] = Counter()
    over: list[float] = []
    arrivals = 0
    delay_ms_max = -math.inf
    digest = hashlib.blake2b(digest_size=16)
    for r in records:
        k = r["k"]
        if k == "e":
            digest.update((r["line"] + "\n").encode())
        elif k == "d":
            op = ops.get(r["op"])
            if not r["first"] or op is None or op[0] < born_ms.get(r["node"], math.inf):
                continue
            delay = r["t_ms"] - op[0]
            arrivals += 1
            bin_ = int(delay * _BINS_PER_MS)
            if bin_ < _BINS_MAX:
                counts[bin_] += 1
            else:
                over.append(delay)
            delay_ms_max = max(delay_ms_max, delay)
            op[2] += 1
            if op[2] == op[1]:
                op[3] = delay
        elif k == "w":
            if r["op"] not in ops:
                peers = r["peers_up"]
                ops[r["op"]] = [
                    r["t_ms"],
                    math.ceil(_QUORUM * peers),
                    0,
                    0.0 if peers == 0 else math.inf,
                ]
        elif k == "l":
            born_ms[r["node"]] = r["t_ms"]
        elif k == "h":
            header = r
        elif k == "end":
            end = r
    if header is None:
        raise TraceError("no header line (k = h): not a formation-sim trace")
    t99 = sorted(op[3] for op in ops.values() if math.isfinite(op[3]))
    trace_hash = digest.hexdigest()
    return {
        "scenario": header.get("scenario"),
        "seed": header.get("seed"),
        "nodes": header.get("nodes"),
        "complete": end is not None,
        "trace_hash": trace_hash,
        "trace_hash_ok": end is not None and end.get("trace_hash") == trace_hash,
        "ops": len(ops),
        "arrivals": arrivals,
        "propagation_ms_p50": _r(_nearest_rank(counts, over, arrivals, 0.5)) if arrivals else None,
        "propagation_ms_p99": _r(_nearest_rank(counts, over, arrivals, 0.99)) if arrivals else None,
        "propagation_ms_max": _r(delay_ms_max) if arrivals else None,
        "time_to_99pct_ms_p50": _r(t99[max(1, math.ceil(0.5 * len(t99))) - 1]) if t99 else None,
        "time_to_99pct_ms_max": _r(t99[-1]) if t99 else None,
        "ops_not_reaching_99pct": len(ops) - len(t99),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m simulations.trace_metrics TRACE_FILE", file=sys.stderr)
        return 2
    try:
        print(json.dumps(figures(read_trace(args[0]))))
    except (OSError, TraceError, KeyError, TypeError) as exc:
        print(f"trace_metrics: {args[0]}: {exc!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
