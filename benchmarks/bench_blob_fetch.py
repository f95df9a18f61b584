"""Blob fetch over the libp2p blob protocol on loopback: MB/s for an image-sized blob.

Two real Transports in one process (Noise + Yamux over TCP on 127.0.0.1), each with a
BlobStore in a temporary directory; B fetches a blob from A by digest with
``node.p2p.blobs.fetch`` (zstd pieces, sha256 verified, streamed to disk). Two kinds of
bytes: random (incompressible, like a compressed qcow2's data) and a repeating pattern
(highly compressible, like the zeroed tail of a raw image).

Run: ``.venv/bin/python benchmarks/bench_blob_fetch.py [--mib 128] [--n 3]``
Prints the median MB/s per kind and writes ``benchmarks/results/blob_fetch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio

from node.identity.keys import NodeKey
from node.p2p import blobs as blob_protocol
from node.p2p.transport import open_transport
from node.pack.blobs import BlobStore

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
_WRITE_BYTES = 1024 * 1024


def _make_blob(path: Path, size_bytes: int, compressible: bool) -> None:
    pattern = bytes(range(256)) * (_WRITE_BYTES // 256)
    with path.open("wb") as out:
        left = size_bytes
        while left:
            n = min(left, _WRITE_BYTES)
            out.write(pattern[:n] if compressible else os.urandom(n))
            left -= n


async def fetch_seconds(size_bytes: int, compressible: bool, n: int) -> list[float]:
    """Seconds for each of ``n`` fetches of one ``size_bytes`` blob from A to B."""
    times: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = root / "blob"
        _make_blob(source, size_bytes, compressible)
        store_a = BlobStore(root / "a")
        digest = store_a.put_file(source, move=True)
        async with (
            open_transport(NodeKey((1).to_bytes(32, "big")), LOOPBACK) as a,
            open_transport(NodeKey((2).to_bytes(32, "big")), LOOPBACK) as b,
        ):
            blob_protocol.register(a, store_a)
            address = await b.connect(a.listen_addrs[0])
            for i in range(n):
                store_b = BlobStore(root / f"b{i}")
                start = time.perf_counter()
                await blob_protocol.fetch(b, store_b, digest, [address])
                times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=128, help="blob size in MiB")
    parser.add_argument("--n", type=int, default=3, help="fetches per kind")
    args = parser.parse_args()
    size_bytes = args.mib * 1024 * 1024
    results: dict[str, object] = {"blob_bytes": size_bytes, "fetches": args.n}
    for label, compressible in (("random", False), ("compressible", True)):
        times = trio.run(fetch_seconds, size_bytes, compressible, args.n)
        rates = [size_bytes / 1e6 / t for t in times]
        results[label] = {
            "median_mb_s": statistics.median(rates),
            "min_mb_s": min(rates),
            "max_mb_s": max(rates),
            "median_s": statistics.median(times),
        }
        print(
            f"libp2p fetch {args.mib} MiB {label:12s}: median {statistics.median(rates):7.1f} MB/s"
            f"  (min {min(rates):.1f}, max {max(rates):.1f}; {statistics.median(times):.2f} s)"
        )
    out = Path(__file__).parent / "results" / "blob_fetch.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
