"""DNS queries per second over UDP against ``serve_dns`` on 127.0.0.1.

The server runs in a process of its own on a zone of ``--instances`` running
instances of 100 builds; the client is a plain blocking UDP socket in the main thread asking
``<build>.fog``, ``<instance>.instance.fog`` and unknown names in turn. Two modes: sequential
(one query in flight: the round trip) and windowed (``--window`` queries in flight: the server's
throughput). Also times building the zone itself (the server rebuilds it at most once a
second, ``node.names.server.ZONE_AGE_S_MAX``).

Run: ``.venv/bin/python benchmarks/bench_dns.py [--queries 20000] [--window 32] [--instances 1000]``
Prints queries/s and writes ``benchmarks/results/dns.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import trio
from dnslib import QTYPE, DNSHeader, DNSQuestion, DNSRecord

from node.names.records import Zone, build_label
from node.names.server import serve_dns


def make_zone(instances: int, build_count: int = 100) -> tuple[Zone, list[str]]:
    rows, addresses = [], {}
    builds = [f"{b:064x}" for b in range(1, build_count + 1)]
    for k in range(instances):
        iid = f"{k:040x}"
        rows.append(
            {
                "instance_id": iid,
                "build_id": builds[k % build_count],
                "slots": [{"slot": 0, "status": "Started"}],
            }
        )
        addresses[f"slot:{iid}:0"] = f"10.42.{k // 250}.{k % 250 + 1}"
    zone = Zone(rows, [], {}, addresses.get)
    names = [build_label(b) + ".fog" for b in builds[:20]]
    names += [f"{k:040x}.instance.fog" for k in range(0, instances, max(1, instances // 20))]
    names += ["nope.fog", "example.com"]
    return zone, names


def _server_process(instances: int, ports: Any) -> None:
    zone, _ = make_zone(instances)

    async def root() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_dns, lambda: zone, "127.0.0.1", 0)
            ports.put(int(bound.rsplit(":", 1)[1]))

    trio.run(root)


def _packets(names: list[str], count: int) -> list[bytes]:
    return [
        DNSRecord(
            DNSHeader(id=i & 0xFFFF, rd=1), q=DNSQuestion(names[i % len(names)], QTYPE.A)
        ).pack()
        for i in range(count)
    ]


def run(sock: socket.socket, packets: list[bytes], window: int) -> float:
    """Queries per second with ``window`` queries in flight (every answer is awaited)."""
    sent = received = 0
    start = time.perf_counter()
    while received < len(packets):
        while sent < len(packets) and sent - received < window:
            sock.send(packets[sent])
            sent += 1
        reply = sock.recv(65535)
        assert reply[2] & 0x80, "an answer"
        received += 1
    return len(packets) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    build_s = []
    for _ in range(5):
        start = time.perf_counter()
        _, names = make_zone(args.instances)
        build_s.append(time.perf_counter() - start)
    # The server in a process of its own: a client thread would share its GIL.
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=_server_process, args=(args.instances, ports), daemon=True)
    server.start()
    port = ports.get(timeout=60)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    packets = _packets(names, args.queries)
    run(sock, packets[:1000], 1)  # warm up
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "instances": args.instances,
        "queries": args.queries,
        "zone_build_ms_median": statistics.median(build_s) * 1000,
    }
    for label, window in (("sequential", 1), ("windowed", args.window)):
        rates = [run(sock, packets, window) for _ in range(args.runs)]
        results[label] = {
            "window": window,
            "median_qps": statistics.median(rates),
            "min_qps": min(rates),
            "max_qps": max(rates),
        }
        print(
            f"dns udp {label:10s} (window {window:3d}): median {statistics.median(rates):8.0f} q/s"
            f"  (min {min(rates):.0f}, max {max(rates):.0f}; {args.queries} queries x {args.runs})"
        )
    print(
        f"zone of {args.instances} instances built in {results['zone_build_ms_median']:.2f} ms (median of 5)"
    )
    sock.close()
    server.terminate()
    server.join(timeout=30)
    out = Path(__file__).parent / "results" / "dns.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
