"""The gateway's signed-write path in one process, without HTTP: CPU per write, commits.

Run: ``.venv/bin/python benchmarks/bench_write_path.py [--writers 1 8 32] [--writes 3000]
[--profile]``. Builds a replica in a temporary directory, the gossip driver
(``GossipService``, with no peers) and a ``GatewayApp`` on it, then has N concurrent tasks
send pre-signed ``POST /v1/account/update`` requests straight to ``GatewayApp.handle``:
authentication, the request op, its verification, the group commit (SQLite, fsync), apply.
What it reports is the process's CPU time per write (``time.process_time``, all threads), which
a busy machine disturbs far less than requests per second, and the batching (writes per
commit). ``--profile`` prints cProfile's top functions of the run with the most writers.
``--store`` measures what bounds a commit instead: the disk's fsync (a ``pwrite`` +
``fdatasync`` loop), ``Replica.submit_checked_groups`` of 1 op and of 32 (thread CPU and wall
per op), and commit latency over 200 commits of 32 ops (the slow ones run SQLite's automatic
checkpoint). ``--reads`` measures the app's part of a signed read the same way (20,000
pre-signed ``GET /v1/account/<address>/get`` to ``GatewayApp.handle`` in turn, process CPU per
read). Writes ``benchmarks/results/bench_write_path.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from node.client.signer import sign_request
from node.gateway.app import GatewayApp
from node.gateway.http import Request
from node.gossip.config import GossipConfig
from node.gossip.core import GossipCore
from node.identity.keys import NodeKey
from node.ledger.admission import own
from node.ledger.op import Op, sign_op
from node.p2p.gossip_driver import GossipService
from node.replica import Replica, SubmitResult

RESULTS = Path(__file__).parent / "results" / "bench_write_path.json"
NET = "local"
KEY = NodeKey(random.Random(7).randbytes(32))


class _Alone:
    def __init__(self) -> None:
        self.inbox_send, self.inbox = trio.open_memory_channel[tuple[str, bytes]](1)

    async def send(self, to: str, data: bytes) -> None:
        raise ConnectionError(to)

    async def connect(self, multiaddr: str) -> str:
        raise ConnectionError(multiaddr)

    async def forget(self, address: str) -> bool:
        return True


class _Node:
    def __init__(self, service: GossipService) -> None:
        self.service = service
        self.replica = service.replica

    def info(self) -> dict[str, Any]:
        return {}

    async def submit_checked(self, ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult:
        return await self.service.submit_checked(ops)


def _requests(kind: str, count: int, run: str) -> list[Request]:
    now_s = int(time.time())
    out = []
    for i in range(count):
        if kind == "create":
            path, body = "/v1/account/create", b'{"name":"bench"}'
        else:
            path = "/v1/account/update"
            body = json.dumps({"description": f"{run} {i}"}, separators=(",", ":")).encode()
        headers = {
            k.lower(): v
            for k, v in sign_request(KEY, "POST", path, body, now_s, f"bench{run}n{i:010d}").items()
        }
        headers["content-type"] = "application/json"
        out.append(Request("POST", path, path, headers, body))
    return out


async def _run(writers: int, writes: int, profile: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-write-path-") as tmp:
        replica = Replica.open(Path(tmp) / "node", NET)
        node_key = NodeKey(random.Random(1).randbytes(32))
        core = GossipCore(
            node_key.address, node_key.address, GossipConfig.local(), random.Random(1), replica
        )
        service = GossipService(core, replica, _Alone())  # type: ignore[arg-type]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                app = GatewayApp(_Node(service))
                [create] = _requests("create", 1, f"c{writers}x")
                assert (await app.handle(create)).status == 201
                todo = _requests("update", writes, f"u{writers}x{random.randrange(10**6)}")
                commits_before = service.commits
                statuses: list[int] = []

                async def writer(mine: list[Request]) -> None:
                    for request in mine:
                        statuses.append((await app.handle(request)).status)

                profiler = cProfile.Profile() if profile else None
                cpu0, wall0 = time.process_time(), time.perf_counter()
                if profiler:
                    profiler.enable()
                async with trio.open_nursery() as group:
                    for w in range(writers):
                        group.start_soon(writer, todo[w::writers])
                if profiler:
                    profiler.disable()
                cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
                commits = service.commits - commits_before
                nursery.cancel_scope.cancel()
        finally:
            replica.close()
    assert statuses == [200] * writes, sorted(set(statuses))
    row = {
        "writers": writers,
        "writes": writes,
        "cpu_ms_per_write": round(1000 * cpu_s / writes, 3),
        "writes_per_s": round(writes / wall_s, 1),
        "writes_per_commit": round(writes / max(commits, 1), 1),
    }
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
        print(text.getvalue())
    return row


def _percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    n = len(ordered)
    return {
        "p50_ms": round(1000 * ordered[n // 2], 2),
        "p90_ms": round(1000 * ordered[int(n * 0.9)], 2),
        "p99_ms": round(1000 * ordered[int(n * 0.99)], 2),
        "max_ms": round(1000 * ordered[-1], 2),
    }


def store_costs() -> dict[str, Any]:
    """What one commit costs on this disk and in this process."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-write-path-") as tmp:
        path = Path(tmp) / "fsync.probe"
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        try:
            os.write(fd, bytes(4096 * 256))
            os.fsync(fd)
            rng = random.Random(5)
            samples = []
            for i in range(200):
                os.pwrite(fd, rng.randbytes(4096), (i % 256) * 4096)
                started = time.perf_counter()
                os.fdatasync(fd)
                samples.append(time.perf_counter() - started)
        finally:
            os.close(fd)
        out["fdatasync_4k"] = _percentiles_ms(samples)
        keys = [NodeKey(random.Random(i).randbytes(32)) for i in range(64)]
        replica = Replica.open(Path(tmp) / "node", NET)
        try:
            now_ms = int(time.time() * 1000)
            creates = [
                own(sign_op(k, NET, (1_700_000_000_000, 0), "account.create", {"name": "x"}))
                for k in keys
            ]
            replica.submit_checked_groups([[c] for c in creates], now_ms)
            ops = [
                own(
                    sign_op(
                        keys[i % 64],
                        NET,
                        (1_700_000_000_001 + i, 0),
                        "account.update",
                        {"description": f"d{i} " + "x" * 100},
                    )
                )
                for i in range(1000 + 6400)
            ]
            for batch, first, count in ((1, 0, 1000), (32, 1000, 6400)):
                cpu0, wall0 = time.thread_time(), time.perf_counter()
                latencies = []
                for start in range(first, first + count, batch):
                    started = time.perf_counter()
                    replica.submit_checked_groups([[o] for o in ops[start : start + batch]], now_ms)
                    latencies.append(time.perf_counter() - started)
                out[f"commit_of_{batch}"] = {
                    "cpu_us_per_op": round(1e6 * (time.thread_time() - cpu0) / count, 1),
                    "wall_us_per_op": round(1e6 * (time.perf_counter() - wall0) / count, 1),
                    **_percentiles_ms(latencies),
                }
        finally:
            replica.close()
    return out


async def _reads(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-write-path-") as tmp:
        replica = Replica.open(Path(tmp) / "node", NET)
        node_key = NodeKey(random.Random(1).randbytes(32))
        core = GossipCore(
            node_key.address, node_key.address, GossipConfig.local(), random.Random(1), replica
        )
        service = GossipService(core, replica, _Alone())  # type: ignore[arg-type]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                app = GatewayApp(_Node(service))
                [create] = _requests("create", 1, "reads")
                assert (await app.handle(create)).status == 201
                path = f"/v1/account/{KEY.address}/get"
                now_s = int(time.time())
                todo = [
                    Request(
                        "GET",
                        path,
                        path,
                        {
                            k.lower(): v
                            for k, v in sign_request(
                                KEY, "GET", path, b"", now_s, f"benchread{i:010d}"
                            ).items()
                        },
                        b"",
                    )
                    for i in range(count)
                ]
                cpu0 = time.process_time()
                for request in todo:
                    app.body_bytes_max("GET", path)  # as the HTTP face asks before the body
                    assert (await app.handle(request)).status == 200
                cpu_s = time.process_time() - cpu0
                nursery.cancel_scope.cancel()
        finally:
            replica.close()
    return {"reads": count, "app_cpu_us_per_read": round(1e6 * cpu_s / count, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--label", default="")
    parser.add_argument("--store", action="store_true", help="what one commit costs instead")
    parser.add_argument("--reads", action="store_true", help="the app's part of a signed read")
    args = parser.parse_args()
    if args.reads:
        row = trio.run(_reads, 20_000)
        print(row)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"benchmark": "read_path", "label": args.label, **row}))
        return
    if args.store:
        costs = store_costs()
        for name, value in costs.items():
            print(name, value)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"benchmark": "write_path_store", "costs": costs}, indent=2))
        return
    rows = []
    for writers in args.writers:
        profile = args.profile and writers == max(args.writers)
        rows.append(trio.run(_run, writers, args.writes, profile))
        print(rows[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "write_path",
                "label": args.label,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
