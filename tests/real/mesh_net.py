"""Network namespaces for the mesh tests: two joined by a veth, and a raw capture on a link.

Everything here lives in namespaces the test makes (``fmt-<hex>-a`` / ``-b``, private
addresses only inside them) and is removed on exit.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

__all__ = [
    "SERVER",
    "UNDERLAY",
    "Capture",
    "Pair",
    "capture_on",
    "classify",
    "host_links",
    "ip",
    "two_netns",
]

_ETH_P_ALL = 0x0003
_CLONE_NEWNET = 0x40000000
UNDERLAY = ("10.88.0.1", "10.88.0.2")
_FRAMES_MAX = 50_000  # bounded capture: the tests send far fewer


async def ip(*argv: str) -> None:
    await trio.run_process(["ip", *argv], capture_stdout=True, capture_stderr=True)


async def host_links() -> set[str]:
    out = await trio.run_process(["ip", "-o", "link"], capture_stdout=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.decode().splitlines()}


@dataclass
class Pair:
    ns: tuple[str, str]
    veth: tuple[str, str]


@asynccontextmanager
async def two_netns() -> AsyncIterator[Pair]:
    """Two fresh namespaces joined by a veth whose ends hold the underlay addresses; IPv6 off
    so the veth carries nothing but what the test sends. Removed on exit."""
    suffix = secrets.token_hex(3)
    pair = Pair((f"fmt-{suffix}-a", f"fmt-{suffix}-b"), (f"fva{suffix}", f"fvb{suffix}"))
    try:
        for ns in pair.ns:
            await ip("netns", "add", ns)
            for key in ("all", "default"):
                await ip(
                    "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"
                )
            await ip("-n", ns, "link", "set", "lo", "up")
        a, b = pair.ns
        await ip(
            "-n",
            a,
            "link",
            "add",
            pair.veth[0],
            "type",
            "veth",
            "peer",
            "name",
            pair.veth[1],
            "netns",
            b,
        )
        for ns, veth, address in zip(pair.ns, pair.veth, UNDERLAY, strict=True):
            await ip("-n", ns, "addr", "add", f"{address}/24", "dev", veth)
            await ip("-n", ns, "link", "set", veth, "up")
        yield pair
    finally:
        with trio.CancelScope(shield=True):
            for ns in pair.ns:
                if await trio.Path("/run/netns", ns).exists():
                    await trio.run_process(["ip", "netns", "del", ns], check=False)


def _raw_socket_in(ns: str) -> socket.socket:
    """An AF_PACKET socket of namespace ``ns``, made by a thread that entered it and exits."""
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            result.append(
                socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            )
        except BaseException as e:  # handed to the caller
            result.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


@dataclass
class Capture:
    sock: socket.socket
    frames: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set() and len(self.frames) < _FRAMES_MAX:
            try:
                self.frames.append(self.sock.recv(65535))
            except TimeoutError:
                continue


@asynccontextmanager
async def capture_on(ns: str, ifname: str) -> AsyncIterator[Capture]:
    sock = _raw_socket_in(ns)
    sock.bind((ifname, 0))
    cap = Capture(sock)
    thread = threading.Thread(target=cap.run, daemon=True)
    thread.start()
    try:
        yield cap
    finally:
        cap.stop.set()
        await trio.to_thread.run_sync(thread.join)
        sock.close()


def classify(frame: bytes, ports: set[int]) -> str:
    """'arp', 'wg-<type>' for WireGuard UDP between the mesh ports, else a description."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0806:
        return "arp"
    if ethertype != 0x0800:
        return f"ethertype {ethertype:#06x}"
    ip = frame[14:]
    header_bytes = (ip[0] & 0x0F) * 4
    if ip[9] != 17:
        return f"ip protocol {ip[9]}"
    sport, dport = struct.unpack_from("!HH", ip, header_bytes)
    if {sport, dport} - ports:
        return f"udp {sport}->{dport}"
    payload = ip[header_bytes + 8 :]
    # WireGuard: a 1-byte message type (1 initiation, 2 response, 3 cookie, 4 data), 3 zeros.
    if len(payload) < 4 or payload[0] not in (1, 2, 3, 4) or payload[1:4] != b"\0\0\0":
        return "udp not WireGuard"
    return f"wg-{payload[0]}"


SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("mesh says " + self.path.strip("/")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer((sys.argv[1], 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""
