"""One real node process: signed requests per second and latency through its HTTP gateway.

Run: ``.venv/bin/python benchmarks/bench_gateway.py [--clients 1 8] [--reads 2000]
[--writes 1000]``. Starts one ``formation-node run`` process (``node.devnet.LocalFog``, with
``--heartbeat-s 0`` so only our requests change its state), creates an account, then for each
number of concurrent clients (threads, one keep-alive ``httpx.Client`` each) sends:

* ``ping``: unsigned ``GET /v1/ping``, the HTTP stack alone (baseline);
* ``read``: signed ``GET /v1/account/<address>/get`` (signature recovery, nonce check, a read);
* ``write``: signed ``POST /v1/account/update`` with a new description each time: the request
  becomes a request op, verified as every replica will, stored with fsync, then answered.

Latency is measured from sending to the full answer; signing happens before the clock starts,
and is measured on its own (``sign_request``, µs per request): it is the client's cost, not
the node's. Requests per second are over the wall time of the whole run, signing included.
``server CPU`` is the node process's CPU time per request (/proc). The clients and the node
share the machine's cores, so with many clients the numbers describe the machine as much as
the node. Prints a table; writes ``benchmarks/results/bench_gateway.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from node.client.api import GatewayClient
from node.client.signer import sign_request
from node.devnet import LocalFog, process_usage
from node.identity.keys import NodeKey

RESULTS = Path(__file__).parent / "results" / "bench_gateway.json"
KEY = NodeKey(random.Random(7).randbytes(32))
WARMUP_REQUESTS = 20  # per client, before the clock starts: connections, caches
REQUEST_TIMEOUT_S = 30.0

# (method, path, body) of request i of client c; the body must change for every write.
Workload = Callable[[int, int], tuple[str, str, bytes | None]]


_NONCES = itertools.count()  # next() is atomic under the GIL: threads share it safely


def _nonce() -> str:
    return f"bench{next(_NONCES):012d}"  # unique for the whole run: 17 characters


def _workloads() -> dict[str, tuple[bool, Workload]]:
    account = f"/v1/account/{KEY.address}/get"

    def write(client: int, i: int) -> tuple[str, str, bytes | None]:
        body = json.dumps({"description": f"client {client} write {i}"}, separators=(",", ":"))
        return "POST", "/v1/account/update", body.encode()

    return {
        "ping": (False, lambda c, i: ("GET", "/v1/ping", None)),
        "read": (True, lambda c, i: ("GET", account, None)),
        "write": (True, write),
    }


def bench_signing(count: int) -> float:
    """µs to sign one request (the write's line), on one thread."""
    body = b'{"description":"client 0 write 0"}'
    now_s = int(time.time())
    started = time.perf_counter()
    for i in range(count):
        sign_request(KEY, "POST", "/v1/account/update", body, now_s, f"signonly{i:012d}")
    return (time.perf_counter() - started) / count * 1e6


def _client(
    url: str,
    client: int,
    count: int,
    signed: bool,
    workload: Workload,
    barrier: threading.Barrier,
    latencies_s: list[float],
    errors: list[str],
) -> None:
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as http:

        def request(i: int) -> httpx.Request:
            method, path, body = workload(client, i)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if signed:
                headers.update(
                    sign_request(KEY, method, path, body or b"", int(time.time()), _nonce())
                )
            return http.build_request(method, url + path, content=body, headers=headers)

        for i in range(-WARMUP_REQUESTS, 0):
            http.send(request(i)).raise_for_status()
        barrier.wait()
        for i in range(count):
            prepared = request(i)
            started = time.perf_counter()
            response = http.send(prepared)
            latencies_s.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:200]}")


def bench_run(
    url: str, pid: int, name: str, signed: bool, workload: Workload, clients: int, requests: int
) -> dict[str, Any]:
    """``requests`` requests of ``workload`` from ``clients`` threads at once."""
    latencies_s: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    shares = [requests // clients + (c < requests % clients) for c in range(clients)]
    threads = [
        threading.Thread(
            target=_client,
            args=(url, c, shares[c], signed, workload, barrier, latencies_s, errors),
            daemon=True,
        )
        for c in range(clients)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()  # every client has warmed up its connection
    cpu_before = process_usage(pid)[0]
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    cpu_s = process_usage(pid)[0] - cpu_before
    assert not errors, f"{name} with {clients} clients: {len(errors)} failed, e.g. {errors[0]}"
    assert len(latencies_s) == requests
    latencies_ms = sorted(1000 * s for s in latencies_s)
    return {
        "workload": name,
        "signed": signed,
        "clients": clients,
        "requests": requests,
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(requests / wall_s, 1),
        "latency_ms_p50": round(latencies_ms[len(latencies_ms) // 2], 3),
        "latency_ms_p99": round(latencies_ms[int(len(latencies_ms) * 0.99)], 3),
        "latency_ms_max": round(latencies_ms[-1], 3),
        "server_cpu_ms_per_request": round(1000 * cpu_s / requests, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reads", type=int, default=2000, help="pings and reads per setting")
    parser.add_argument("--writes", type=int, default=1000, help="writes per setting")
    args = parser.parse_args()
    assert all(c >= 1 for c in args.clients) and min(args.reads, args.writes) >= max(args.clients)

    sign_us = bench_signing(2000)
    print(f"signing: {sign_us:.1f} µs per request (client side, one thread)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        fog = LocalFog(Path(tmp), extra_args=("--heartbeat-s", "0"))
        try:
            fog.start(0)
            status = fog.status(0)
            assert status is not None and status["gateway"], "the node reports no gateway"
            url, pid = status["gateway"], fog.procs[0].pid
            with GatewayClient(url, KEY) as client:
                client.account_create(name="bench")
                ops_before = client.node_info()["ops"]
            for clients in args.clients:
                for name, (signed, workload) in _workloads().items():
                    count = args.writes if name == "write" else args.reads
                    print(f"{name} x {count} with {clients} clients ...", flush=True)
                    rows.append(bench_run(url, pid, name, signed, workload, clients, count))
            with GatewayClient(url, KEY) as client:
                writes_done = client.node_info()["ops"] - ops_before
                description = client.account_get(KEY.address)["description"]
        finally:
            fog.stop_all()
    # Every write (warm-ups included) became exactly one op, and the last one is readable.
    writes_sent = sum(args.writes + WARMUP_REQUESTS * clients for clients in args.clients)
    assert writes_done == writes_sent, (writes_done, writes_sent)
    assert description.startswith("client "), description

    header = (
        "workload",
        "clients",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU ms/req",
    )
    keys = (
        "workload",
        "clients",
        "requests",
        "requests_per_s",
        "latency_ms_p50",
        "latency_ms_p99",
        "latency_ms_max",
        "server_cpu_ms_per_request",
    )
    print("  ".join(f"{h:>10}" for h in header))
    for r in rows:
        print("  ".join(f"{r[k]!s:>10}" for k in keys))
    print(f"signing (client): {sign_us:.1f} µs per request")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "gateway",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "sign_us_per_request": round(sign_us, 2),
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
