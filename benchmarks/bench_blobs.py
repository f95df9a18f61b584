"""Build-context upload through a real gateway, and blob fetch over libp2p: MB/s.

Upload: a real gateway (``serve_gateway``, the node's own ASGI app) on 127.0.0.1 in a
thread, in front of a Replica and a BlobStore in a temporary directory; the client is
``node.client.context.upload`` with a signing ``GatewayClient`` (what ``form pack build``
does). The context is ``--mib`` MiB: three quarters in one random (incompressible) file, the
rest in 4 KiB text files (compressible, many requests). Measured:

* ``first``: the node holds nothing, every chunk and the manifest go up;
* ``second``: the same tree again: the node holds everything, nothing but the ask is sent;
* ``one_file_changed``: one small file edited: one chunk and the manifest go up.

MB/s is context bytes over wall time (collect + hash + ask + send), so it is what a user
waits for. Fetch: ``bench_blob_fetch.fetch_seconds`` (two real Transports on loopback).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_blobs.py [--mib 64] [--fetch-mib 128]``
Prints a table and writes ``benchmarks/results/bench_blobs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_blob_fetch import fetch_seconds

from node.client.api import GatewayClient
from node.client.context import UploadResult, upload
from node.gateway.app import GatewayApp, serve_gateway
from node.identity.keys import NodeKey
from node.ledger.op import Op
from node.pack.blobs import BlobStore
from node.replica import Replica, SubmitResult

RESULTS = Path(__file__).parent / "results" / "bench_blobs.json"
KEY = NodeKey(random.Random(11).randbytes(32))
NET = "testnet"
SMALL_FILE_BYTES = 4096


class _Node:
    """What the gateway needs of a node, plus the blob store the blob routes use."""

    def __init__(self, replica: Replica, blobs: BlobStore) -> None:
        self.replica = replica
        self.blobs = blobs

    def info(self) -> dict[str, Any]:
        return {"address": "0x" + "00" * 20, "network": NET}

    async def submit_checked(self, ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult:
        return await trio.to_thread.run_sync(
            self.replica.submit_checked, ops, int(time.time() * 1000)
        )


class _Gateway:
    """A gateway served from its own thread (the client under test is synchronous)."""

    def __init__(self, root: Path) -> None:
        self.replica = Replica.open(root / "node", NET)
        self.store = BlobStore(root / "blobs")
        self.url = ""
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), daemon=True)

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            self.url = await nursery.start(
                serve_gateway, GatewayApp(_Node(self.replica, self.store)), "127.0.0.1", 0
            )
            self._ready.set()

    def __enter__(self) -> _Gateway:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the gateway did not start within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None and self._cancel is not None
        trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(30)
        self.replica.close()


def _make_context(root: Path, total_bytes: int) -> int:
    """A tree under ``root/app`` of about ``total_bytes``; returns how many files."""
    app = root / "app"
    app.mkdir(parents=True)
    big = total_bytes * 3 // 4
    (app / "model.bin").write_bytes(os.urandom(big))
    rng = random.Random(3)
    small = (total_bytes - big) // SMALL_FILE_BYTES
    for i in range(small):
        sub = app / f"src{i // 200:02d}"
        sub.mkdir(exist_ok=True)
        words = " ".join(
            rng.choice(("def", "return", "value", "node", "chunk")) for _ in range(900)
        )
        (sub / f"mod{i:05d}.py").write_text(words[:SMALL_FILE_BYTES])
    return small + 1


def _timed(client: GatewayClient, root: Path) -> tuple[float, UploadResult]:
    start = time.perf_counter()
    result = upload(client, root, ["app"])
    return time.perf_counter() - start, result


def _row(label: str, seconds: float, result: UploadResult) -> dict[str, Any]:
    rate = result.bytes_total / 1e6 / seconds
    print(
        f"upload {label:17s} {seconds:7.3f} s  {rate:8.1f} MB/s of context  "
        f"sent {result.bytes_sent / 1e6:8.2f} MB raw, {result.wire_bytes_sent / 1e6:8.2f} MB wire, "
        f"{result.chunks_sent}/{result.chunks_total} chunks"
    )
    return {
        "seconds": seconds,
        "context_mb_s": rate,
        "bytes_total": result.bytes_total,
        "bytes_sent": result.bytes_sent,
        "wire_bytes_sent": result.wire_bytes_sent,
        "chunks_sent": result.chunks_sent,
        "chunks_total": result.chunks_total,
        "files": result.files,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64, help="context size in MiB")
    parser.add_argument("--fetch-mib", type=int, default=128, help="libp2p fetch blob MiB")
    parser.add_argument("--fetch-n", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {"gateway": "real gateway server on 127.0.0.1 (in-process thread)"}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        files = _make_context(root / "ctx", args.mib * 1024 * 1024)
        with (
            _Gateway(root / "gw") as gateway,
            GatewayClient(gateway.url, KEY, timeout_s=60) as client,
        ):
            first_s, first = _timed(client, root / "ctx")
            second_s, second = _timed(client, root / "ctx")
            edited = next((root / "ctx" / "app" / "src00").iterdir())
            edited.write_text("changed\n" + edited.read_text()[8:])
            third_s, third = _timed(client, root / "ctx")
        results["files"] = files
        results["first"] = _row("first", first_s, first)
        results["second"] = _row("second (same)", second_s, second)
        results["one_file_changed"] = _row("one file changed", third_s, third)
    times = trio.run(fetch_seconds, args.fetch_mib * 1024 * 1024, False, args.fetch_n)
    rates = [args.fetch_mib * 1024 * 1024 / 1e6 / t for t in times]
    results["libp2p_fetch_random"] = {
        "blob_bytes": args.fetch_mib * 1024 * 1024,
        "median_mb_s": statistics.median(rates),
        "min_mb_s": min(rates),
        "max_mb_s": max(rates),
    }
    print(
        f"libp2p fetch {args.fetch_mib} MiB random: median {statistics.median(rates):.1f} MB/s "
        f"(min {min(rates):.1f}, max {max(rates):.1f})"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
