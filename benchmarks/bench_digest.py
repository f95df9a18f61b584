"""Benchmark the op-set digest: insert rate, and reconciliation cost against sending all ids.

Run: ``.venv/bin/python benchmarks/bench_digest.py [--n 100000] [--seed 1]``
Prints a table and writes ``benchmarks/results/digest.json``.

Ops are random 32-byte ids; 90% have wall times in a one-hour window around 1.76e12 ms (now)
and 10% are a tail spread over the three years before. Two replicas of ``n`` ops each share
all but ``d`` ops (d/2 unique to each side, drawn from the same time distribution, which
spreads them over the whole tree: recent-only differences would be cheaper).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from node.ledger.digest import (
    DEFAULT_CONFIG,
    ID_BYTES,
    OpDigest,
    reconcile,
)

NOW_MS = 1_760_000_000_000
HOUR_MS = 3_600_000
TAIL_MS = 3 * 365 * 86_400_000
DIFFS = (0, 10, 1_000, 10_000)
RESULTS = Path(__file__).parent / "results" / "digest.json"


def make_items(rng: random.Random, n: int) -> list[tuple[bytes, int]]:
    items = []
    for _ in range(n):
        if rng.random() < 0.9:
            wall_ms = NOW_MS - HOUR_MS // 2 + rng.randrange(HOUR_MS)
        else:
            wall_ms = NOW_MS - HOUR_MS // 2 - rng.randrange(TAIL_MS)
        items.append((rng.randbytes(ID_BYTES), wall_ms))
    return items


def best_of(repeats: int, run: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def add_all(items: list[tuple[bytes, int]]) -> OpDigest:
    digest = OpDigest()
    for op_id, wall_ms in items:
        digest.add(op_id, wall_ms)
    return digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="ops per replica")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    n: int = args.n
    items = make_items(rng, n)

    add_s = best_of(3, lambda: add_all(items))
    bulk_s = best_of(3, lambda: OpDigest.from_items(items))
    digest = OpDigest.from_items(items)
    root_s = best_of(5, lambda: [digest.root() for _ in range(1_000)]) / 1_000
    tracemalloc.start()
    kept = OpDigest.from_items(items)
    memory_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept

    print(f"digest of {n} ops (seed {args.seed}), config {DEFAULT_CONFIG}")
    print(f"  add:        {n / add_s:>10,.0f} ids/s  ({add_s * 1e6 / n:.2f} µs per add)")
    print(f"  from_items: {n / bulk_s:>10,.0f} ids/s")
    print(f"  root():     {root_s * 1e6:>10.2f} µs")
    print(f"  memory:     {memory_bytes / n:>10.0f} B per op, not counting ids")
    print()
    header = (
        f"{'diff':>6} {'flights':>7} {'flights*':>8} {'bytes':>10} {'all ids':>10}"
        f" {'vs all':>7} {'B/diff':>7} {'wall ms':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for diff in DIFFS:
        extra = make_items(rng, diff)
        common = items[: n - diff // 2]
        a = OpDigest.from_items(common + extra[: diff // 2])
        b = OpDigest.from_items(common + extra[diff // 2 :])
        start = time.perf_counter()
        result = reconcile(a, b)
        wall_s = time.perf_counter() - start
        expanded = reconcile(a, b, open_expanded=True)
        found = len(result.ids_a_lacks) + len(result.ids_b_lacks)
        if found != diff or len(expanded.ids_a_lacks) + len(expanded.ids_b_lacks) != diff:
            sys.exit(f"reconcile found {found} differing ids, expected {diff}")
        all_ids_bytes = ID_BYTES * n
        row = {
            "diff": diff,
            "rounds": result.rounds,
            "rounds_open_expanded": expanded.rounds,
            "bytes": result.bytes_exchanged,
            "bytes_open_expanded": expanded.bytes_exchanged,
            "all_ids_bytes": all_ids_bytes,
            "fraction_of_all_ids": result.bytes_exchanged / all_ids_bytes,
            "bytes_per_diff": result.bytes_exchanged / diff if diff else None,
            "wall_s": wall_s,
        }
        rows.append(row)
        per_diff = f"{result.bytes_exchanged / diff:7.0f}" if diff else f"{'-':>7}"
        print(
            f"{diff:>6} {result.rounds:>7} {expanded.rounds:>8} {result.bytes_exchanged:>10,}"
            f" {all_ids_bytes:>10,} {result.bytes_exchanged / all_ids_bytes:>7.2%} {per_diff}"
            f" {wall_s * 1e3:>8.1f}"
        )
    print()
    print("flights: one-way message batches from the root comparison to the last id list;")
    print("flights*: opening with the root's expansion (roots already compared in a heartbeat);")
    print(f"all ids: one side sending every id ({ID_BYTES} B each), the naive alternative.")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "digest",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "n": n,
        "seed": args.seed,
        "config": {
            "ids_threshold": DEFAULT_CONFIG.ids_threshold,
            "entries_budget": DEFAULT_CONFIG.entries_budget,
        },
        "add_ids_per_s": n / add_s,
        "from_items_ids_per_s": n / bulk_s,
        "root_us": root_s * 1e6,
        "memory_bytes_per_op": memory_bytes / n,
        "reconcile": rows,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
