"""Mesh data path benchmark: TCP throughput and ping latency over WireGuard vs the bare veth.

Run (root): ``.venv/bin/python benchmarks/bench_mesh_path.py [--seconds 3] [--runs 3]
[--pings 50]``. It makes two network namespaces joined by a veth (underlay 10.88.0.1/2),
opens ``node.mesh.wireguard.open_wireguard`` in each (mesh 10.42.0.1/2), and between the same
two namespaces measures, first to B's veth address and then to its mesh address:
TCP throughput (a process in A writes 128 KiB blocks for ``--seconds`` to a process in B,
which counts what it reads; MiB/s at the receiver, median of ``--runs``) and ping round trip
(``--pings`` echoes 50 ms apart: min / avg / max ms). Prints both and the mesh/veth ratio and
writes ``benchmarks/results/mesh_path.json``. Everything it made is removed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.mesh.wireguard import (  # noqa: E402
    Peer,
    generate_private_key,
    new_ifname,
    open_wireguard,
    public_key_of,
    wireguard_tools_missing,
)

RESULTS = Path(__file__).parent / "results" / "mesh_path.json"
UNDERLAY = ("10.88.0.1", "10.88.0.2")
MESH = ("10.42.0.1", "10.42.0.2")

_SINK = """
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); n = 0; first = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if first is None: first = time.perf_counter()
    n += len(b)
print(n, time.perf_counter() - first, flush=True)
"""
_SOURCE = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
block = b"x" * (128 << 10); end = time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end: c.sendall(block)
c.close()
"""


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@contextmanager
def two_netns() -> Iterator[tuple[str, str]]:
    suffix = secrets.token_hex(3)
    a, b = f"fmb-{suffix}-a", f"fmb-{suffix}-b"
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "-n",
            a,
            "link",
            "add",
            f"fva{suffix}",
            "type",
            "veth",
            "peer",
            "name",
            f"fvb{suffix}",
            "netns",
            b,
        )
        for ns, veth, address in (
            (a, f"fva{suffix}", UNDERLAY[0]),
            (b, f"fvb{suffix}", UNDERLAY[1]),
        ):
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", veth)
            _ip("-n", ns, "link", "set", veth, "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def throughput_mib_s(a: str, b: str, address: str, seconds: float) -> float:
    sink = subprocess.Popen(
        ["ip", "netns", "exec", b, sys.executable, "-c", _SINK, address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        port = sink.stdout.readline().strip()
        subprocess.run(
            ["ip", "netns", "exec", a, sys.executable, "-c", _SOURCE, address, port, str(seconds)],
            check=True,
        )
        count, elapsed = sink.stdout.readline().split()
        sink.wait(timeout=30)
    finally:
        sink.kill()
        sink.wait()
    return int(count) / float(elapsed) / (1 << 20)


def ping_ms(a: str, address: str, count: int) -> dict[str, float]:
    out = subprocess.run(
        ["ip", "netns", "exec", a, "ping", "-n", "-q", "-c", str(count), "-i", "0.05", address],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    assert match, out
    return {"min": float(match[1]), "avg": float(match[2]), "max": float(match[3])}


def measure(a: str, b: str, address: str, args: argparse.Namespace) -> dict[str, Any]:
    runs = [throughput_mib_s(a, b, address, args.seconds) for _ in range(args.runs)]
    return {
        "tcp_mib_s": statistics.median(runs),
        "tcp_mib_s_runs": runs,
        "ping_ms": ping_ms(a, address, args.pings),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    keys = (generate_private_key(), generate_private_key())
    with ExitStack() as stack:
        a, b = stack.enter_context(two_netns())
        veth = await trio.to_thread.run_sync(measure, a, b, UNDERLAY[1], args)
        t0 = time.perf_counter()
        async with (
            open_wireguard(
                netns=b,
                ifname=new_ifname(),
                private_key=keys[1],
                listen_port=0,
                address_cidr=f"{MESH[1]}/16",
            ) as wg_b,
            open_wireguard(
                netns=a,
                ifname=new_ifname(),
                private_key=keys[0],
                listen_port=0,
                address_cidr=f"{MESH[0]}/16",
            ) as wg_a,
        ):
            await wg_b.set_peers(
                [
                    Peer(
                        public_key_of(keys[0]),
                        f"{UNDERLAY[0]}:{wg_a.listen_port}",
                        [f"{MESH[0]}/32"],
                    )
                ]
            )
            await wg_a.set_peers(
                [
                    Peer(
                        public_key_of(keys[1]),
                        f"{UNDERLAY[1]}:{wg_b.listen_port}",
                        [f"{MESH[1]}/32"],
                    )
                ]
            )
            up_s = time.perf_counter() - t0
            # The first echo waits for the handshake; time it, then measure the steady state.
            t1 = time.perf_counter()
            await trio.run_process(
                ["ip", "netns", "exec", a, "ping", "-n", "-q", "-c", "1", "-w", "30", MESH[1]],
                capture_stdout=True,
            )
            first_ping_s = time.perf_counter() - t1
            mesh = await trio.to_thread.run_sync(measure, a, b, MESH[1], args)
    return {
        "veth": veth,
        "mesh": mesh,
        "mesh_up_s": up_s,
        "first_ping_s": first_ping_s,
        "throughput_ratio": mesh["tcp_mib_s"] / veth["tcp_mib_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pings", type=int, default=50)
    args = parser.parse_args()
    missing = wireguard_tools_missing()
    if missing:
        sys.exit(f"missing {missing}: run scripts/ensure-system-deps.sh run test")
    result = trio.run(run, args)
    for path in ("veth", "mesh"):
        r = result[path]
        p = r["ping_ms"]
        print(
            f"{path:5}  tcp {r['tcp_mib_s']:9,.1f} MiB/s   ping min/avg/max "
            f"{p['min']:.3f}/{p['avg']:.3f}/{p['max']:.3f} ms"
        )
    print(
        f"mesh/veth throughput {result['throughput_ratio']:.3f}; interfaces up + peers set in "
        f"{result['mesh_up_s']:.2f} s; first ping (with handshake) {result['first_ping_s']:.2f} s"
    )
    out = {
        "benchmark": "mesh_path",
        "args": vars(args),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        **result,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
