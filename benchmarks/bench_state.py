"""State-core benchmark: verify+apply rate, replica merge, durable submit, bytes per op.

Run: ``.venv/bin/python benchmarks/bench_state.py [--merge-ops N]`` (about a minute at the
default N = 100,000; most of it is *signing* the workload, which is not measured). Prints a
table and writes ``benchmarks/results/state.json``. One core: nothing here uses threads.

Measured:

* ``ingest``: signed ops from outside, verified (ECDSA recovery, canonical-form check), checked
  (schema, authorization) and applied, per second. The issue's aim is >= 10,000/s.
* ``apply``: already-verified ops (replay from our own log) applied per second.
* ``merge``: two replicas holding N ops each (disjoint: written on different sides of a
  partition) are merged, three ways:
  ``state_join``: the CRDT join of the two states (what a snapshot exchange between trusting
  replicas would cost); ``op_exchange``: each side applies the ops it lacks, which is what
  anti-entropy does once the missing ids are known, with ops from our own log (no ECDSA);
  ``op_exchange_verified``: the same with every foreign op verified first, as gossip from an
  untrusted peer requires. The issue's aim is <= 2 s.
* ``submit``: ``Replica.submit`` (verify, fsync'd SQLite append, apply) per second at batch
  sizes 1 and 100, and bytes per op on disk.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node.ledger.state import State
from node.replica import Replica
from simulations.workload import Workload

SEED = 42
NET = "bench"
T0_MS = 1_760_000_000_000
RESULTS = Path(__file__).parent / "results" / "state.json"


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_ingest(workload: Workload, count: int) -> dict[str, Any]:
    ops = list(workload.ops(count, T0_MS))
    wire = [(op.body, op.sig) for op in ops]
    state = State(NET)
    started = time.perf_counter()
    for body, sig in wire:
        state.ingest(body, sig)
    ingest_s = time.perf_counter() - started
    replay = State(NET)
    started = time.perf_counter()
    for op in ops:
        replay.apply(op)
    apply_s = time.perf_counter() - started
    assert replay.state_hash() == state.state_hash()
    return {
        "ops": count,
        "ingest_ops_per_s": round(rate(count, ingest_s)),
        "ingest_us_per_op": round(ingest_s / count * 1e6, 1),
        "apply_ops_per_s": round(rate(count, apply_s)),
        "mean_body_bytes": round(sum(len(op.body) for op in ops) / count),
    }


def bench_merge(rng: random.Random, count: int) -> dict[str, Any]:
    side_a = Workload(random.Random(rng.random()), NET)
    side_b = Workload(random.Random(rng.random()), NET)
    print(f"  signing 2 x {count:,} ops (not measured) ...", flush=True)
    ops_a = list(side_a.ops(count, T0_MS))
    ops_b = list(side_b.ops(count, T0_MS + 7))
    a, b = State(NET), State(NET)
    for op in ops_a:
        a.apply(op)
    for op in ops_b:
        b.apply(op)
    expected_ops = a.op_count + b.op_count

    left, right = State.from_snapshot(a.snapshot()), State.from_snapshot(b.snapshot())
    left_copy = State.from_snapshot(a.snapshot())
    started = time.perf_counter()
    left.merge(right)
    right.merge(left_copy)
    join_s = time.perf_counter() - started
    assert left.state_hash() == right.state_hash() and left.op_count == expected_ops

    left, right = State.from_snapshot(a.snapshot()), State.from_snapshot(b.snapshot())
    started = time.perf_counter()
    for op in ops_b:
        left.apply(op)
    for op in ops_a:
        right.apply(op)
    exchange_s = time.perf_counter() - started
    assert left.state_hash() == right.state_hash()
    merged_hash = left.state_hash()

    left, right = State.from_snapshot(a.snapshot()), State.from_snapshot(b.snapshot())
    started = time.perf_counter()
    for op in ops_b:
        left.ingest(op.body, op.sig)
    for op in ops_a:
        right.ingest(op.body, op.sig)
    verified_s = time.perf_counter() - started
    assert left.state_hash() == right.state_hash() == merged_hash
    return {
        "ops_per_replica": count,
        "state_join_s": round(join_s, 3),
        "op_exchange_s": round(exchange_s, 3),
        "op_exchange_verified_s": round(verified_s, 3),
        "converged": True,
    }


def bench_submit(workload: Workload, count: int) -> dict[str, Any]:
    ops = list(workload.ops(count, T0_MS))
    out: dict[str, Any] = {}
    for batch in (1, 100):
        with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
            replica = Replica.open(Path(tmp), NET)
            base = replica.store.size_bytes()
            started = time.perf_counter()
            for start in range(0, count, batch):
                chunk = ops[start : start + batch]
                result = replica.submit([(op.body, op.sig) for op in chunk], now_ms=T0_MS + count)
                assert len(result.accepted) == len(chunk)
            elapsed = time.perf_counter() - started
            replica.store.checkpoint()
            out[f"batch_{batch}_ops_per_s"] = round(rate(count, elapsed))
            out["disk_bytes_per_op"] = round((replica.store.size_bytes() - base) / count)
            replica.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--merge-ops", type=int, default=100_000, help="ops per replica in the merge test"
    )
    parser.add_argument("--ingest-ops", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(SEED)
    print("state core benchmark (one core)")
    ingest = bench_ingest(Workload(random.Random(rng.random()), NET), args.ingest_ops)
    print(
        f"  ingest (verify+check+apply) {ingest['ingest_ops_per_s']:>9,} ops/s  ({ingest['ingest_us_per_op']} µs/op, bodies ~{ingest['mean_body_bytes']} B)"
    )
    print(f"  apply (trusted replay)      {ingest['apply_ops_per_s']:>9,} ops/s")
    submit = bench_submit(Workload(random.Random(rng.random()), NET), 3_000)
    print(f"  submit, batch 1 (fsync each){submit['batch_1_ops_per_s']:>9,} ops/s")
    print(
        f"  submit, batch 100           {submit['batch_100_ops_per_s']:>9,} ops/s   {submit['disk_bytes_per_op']} B/op on disk"
    )
    merge = bench_merge(rng, args.merge_ops)
    print(
        f"  merge 2 x {args.merge_ops:,} ops: state join {merge['state_join_s']} s, op exchange {merge['op_exchange_s']} s, op exchange with verification {merge['op_exchange_verified_s']} s"
    )
    result = {
        "benchmark": "state",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "seed": SEED,
        "ingest": ingest,
        "submit": submit,
        "merge": merge,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
