"""How fast the durable store appends, how big it gets and how fast it replays.

Run: ``.venv/bin/python benchmarks/bench_store.py`` (about 20 s; ``BENCH_TMPDIR=/some/disk`` to
measure a disk other than the system temp dir, which must not be tmpfs for the fsync numbers
to mean anything). Prints a table and writes
``benchmarks/results/store.json``.

* Durable appends: a fresh store per batch size (1, 10, 100, 1000 ops of ~200 B bodies), each
  ``append`` returning only after its commit is fsync'd. One commit is one WAL ``fdatasync``
  (``synchronous=FULL``); WAL auto-checkpoints add a few more (strace on this code: 3029
  fdatasyncs for 2999 single-op commits), so ``commits/s`` is the fsync rate to within ~1 %.
* Bytes per op on disk, after a checkpoint, minus the empty store: small ops, and ops with a
  4 KiB payload of prose-like text (compressible, like a Formfile) or of random hex.
* ``iter_ops`` replay rate (rows rebuilt with ``Op.trusted``, ids re-hashed), and the cost of
  the op-row verification ``Store.open`` does by default.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node.identity.keys import NodeKey
from node.ledger.op import Op, sign_op
from node.store import Store

SEED = 1
NET = "local"
BATCH_SIZES = (1, 10, 100, 1000)
APPEND_BUDGET_S = 2.0
APPEND_OPS_MAX = 20_000
SMALL_OPS = 20_000
LARGE_OPS = 2_000
RESULTS = Path(__file__).parent / "results" / "store.json"

_WORDS = [
    "image",
    "runtime",
    "gpu",
    "memory_mb",
    "vcpus",
    "port",
    "expose",
    "env",
    "model",
    "agent",
    "cache",
    "volume",
    "mount",
    "healthcheck",
    "restart",
    "policy",
    "replicas",
    "region",
    "tag",
    "build",
    "from",
    "run",
    "copy",
    "entrypoint",
]


def small_ops(key: NodeKey, count: int, rng: random.Random) -> list[Op]:
    return [
        sign_op(
            key,
            NET,
            (1_700_000_000_000 + i, 0),
            "instance.start",
            {"instance": rng.randbytes(16).hex(), "n": i, "node": rng.randbytes(8).hex()},
        )
        for i in range(count)
    ]


def large_ops(key: NodeKey, count: int, rng: random.Random, *, text: bool) -> list[Op]:
    ops = []
    for i in range(count):
        if text:
            payload = " ".join(rng.choice(_WORDS) for _ in range(700))[:4096]
        else:
            payload = rng.randbytes(2048).hex()
        ops.append(sign_op(key, NET, (1_700_000_000_000 + i, 0), "formfile.put", {"f": payload}))
    return ops


def bench_append(root: Path, ops: list[Op], batch: int) -> dict[str, Any]:
    with Store.open(root / f"append-{batch}", network=NET) as store:
        store.append(ops[:1])  # file creation is not part of the steady state
        done, commits = 1, 0
        start = time.perf_counter()
        while done < len(ops) and time.perf_counter() - start < APPEND_BUDGET_S:
            chunk = ops[done : done + batch]
            store.append(chunk)
            done += len(chunk)
            commits += 1
        elapsed = time.perf_counter() - start
    return {
        "batch": batch,
        "ops": done - 1,
        "seconds": round(elapsed, 3),
        "ops_per_s": round((done - 1) / elapsed),
        "commits_per_s": round(commits / elapsed),
    }


def bench_size(root: Path, name: str, ops: list[Op]) -> dict[str, Any]:
    with Store.open(root / f"size-{name}", network=NET) as store:
        store.checkpoint()
        empty = store.size_bytes()
        for start in range(0, len(ops), 1000):
            store.append(ops[start : start + 1000])
        store.checkpoint()
        total = store.size_bytes()
    body = sum(len(op.body) for op in ops) / len(ops)
    return {
        "ops": name,
        "count": len(ops),
        "body_bytes_mean": round(body),
        "disk_bytes_per_op": round((total - empty) / len(ops)),
        "file_bytes": total,
    }


def bench_read(root: Path, name: str) -> dict[str, Any]:
    data_dir = root / f"size-{name}"
    start = time.perf_counter()
    Store.open(data_dir, network=NET, verify_ops=False).close()
    open_quick_s = time.perf_counter() - start
    start = time.perf_counter()
    store = Store.open(data_dir, network=NET)
    open_full_s = time.perf_counter() - start
    with store:
        start = time.perf_counter()
        count = sum(1 for _ in store.iter_ops())
        elapsed = time.perf_counter() - start
    return {
        "ops": name,
        "count": count,
        "iter_ops_per_s": round(count / elapsed),
        "open_ms": round(open_quick_s * 1000, 1),
        "open_verify_ops_ms": round(open_full_s * 1000, 1),
        "verify_us_per_op": round((open_full_s - open_quick_s) / count * 1e6, 2),
    }


def filesystem_of(path: Path) -> str:
    """File system type holding ``path`` (fsync on tmpfs is free, which would flatter us)."""
    best, fstype = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fstype
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
            best, fstype = fields[1], fields[2]
    return fstype


def main() -> None:
    began = time.perf_counter()
    rng = random.Random(SEED)
    key = NodeKey(random.Random(SEED).randbytes(32))
    small = small_ops(key, SMALL_OPS, rng)
    sets = {
        "small": small,
        "4KiB text": large_ops(key, LARGE_OPS, rng, text=True),
        "4KiB random hex": large_ops(key, LARGE_OPS, rng, text=False),
    }
    # BENCH_TMPDIR picks the disk to measure; the default is the system temp dir.
    with tempfile.TemporaryDirectory(
        prefix="bench-store-", dir=os.environ.get("BENCH_TMPDIR")
    ) as tmp:
        root = Path(tmp).resolve()
        fstype = filesystem_of(root)
        if fstype == "tmpfs":
            print(f"warning: {root} is on tmpfs, where fsync costs nothing; set BENCH_TMPDIR")
        appends = [bench_append(root, small[:APPEND_OPS_MAX], batch) for batch in BATCH_SIZES]
        sizes = [bench_size(root, name, ops) for name, ops in sets.items()]
        reads = [bench_read(root, name) for name in sets]
        tmp_dir = str(root)

    print(f"durable appends, ~{sizes[0]['body_bytes_mean']} B bodies, fsync per commit")
    print(f"  {'batch':>6} {'ops':>7} {'ops/s':>9} {'fsyncs/s':>9}")
    for row in appends:
        print(
            f"  {row['batch']:>6} {row['ops']:>7} {row['ops_per_s']:>9} {row['commits_per_s']:>9}"
        )
    print("on disk after checkpoint")
    print(f"  {'ops':<16} {'count':>6} {'body B':>7} {'disk B/op':>9}")
    for row in sizes:
        print(
            f"  {row['ops']:<16} {row['count']:>6} {row['body_bytes_mean']:>7}"
            f" {row['disk_bytes_per_op']:>9}"
        )
    print("replay and open")
    print(f"  {'ops':<16} {'iter_ops/s':>10} {'open ms':>8} {'+verify ms':>10} {'µs/op':>6}")
    for row in reads:
        print(
            f"  {row['ops']:<16} {row['iter_ops_per_s']:>10} {row['open_ms']:>8}"
            f" {row['open_verify_ops_ms']:>10} {row['verify_us_per_op']:>6}"
        )
    total_s = time.perf_counter() - began
    print(f"total {total_s:.1f} s")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "store",
        "env": {
            "python": sys.version.split()[0],
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "tmp_dir": tmp_dir,
            "filesystem": fstype,
        },
        "append": appends,
        "size": sizes,
        "read": reads,
        "total_s": round(total_s, 1),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
