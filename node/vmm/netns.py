"""The VMs' private network: a netns with a bridge, one tap per VM, and DHCP by dnsmasq.

Theory of operation
-------------------
``open_vm_network`` creates a network namespace named ``fvm-<8 hex>`` (random per driver, so
two drivers or a crashed earlier run never collide), brings its loopback up and makes in it a
bridge ``fvmbr0`` holding the gateway address of a private /24 (``10.77.0.1``). Because every
device and address lives inside that namespace, the host's own namespace gains nothing: no
link, no address, no route (the test checks ``ip -o link`` before and after). The same
subnet in two namespaces never conflicts.

``add_tap(key)`` gives a VM the lowest free guest address of the /24 (``.10``..``.249``), a MAC
derived from it (``52:54:00:77:00:<octet>``, locally administered QEMU prefix) and a tap
``fvt<n>`` enslaved to the bridge; its reservation ``MAC,IP`` is written to dnsmasq's hosts
file and dnsmasq is told to reread it (SIGHUP). dnsmasq runs inside the namespace
(``ip netns exec``) in ``static`` mode: it answers only reserved MACs, with ``--no-ping`` (no
ICMP probe delaying the answer, which under TCG made guests miss their first exchange; see
../shared/reference/vm-and-network.md) and without DNS (``--port=0``).

``socket_in_netns`` makes a socket *inside* the namespace from a fresh thread that entered it
with setns(2) and then exits (so no thread is left in the wrong namespace); the socket stays
bound to that namespace when the node's Trio loop uses it. ``node.vmm.forward`` dials guests
with it, so no address on the host is needed to reach them.

On exit, even after an error or a cancel: dnsmasq is stopped (terminate, then kill), and the
namespace is removed, which destroys its bridge and taps once no process holds it (the QEMU
driver kills its VMs before it closes the network). A node killed with SIGKILL cannot do that;
its VMs and dnsmasq run on in the namespace. The namespace's name is kept in the run dir
(``netns-name``), so the next start kills what runs in it and removes it before it makes a
new one: a restarted node never runs a slot twice. (``PR_SET_PDEATHSIG`` would not help:
Trio forks from a worker thread, and the signal follows the thread, not the process.)
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio
from pyroute2 import NetNS, netns  # type: ignore[import-untyped]

__all__ = [
    "BRIDGE",
    "GATEWAY_IP",
    "Lease",
    "VmNetwork",
    "open_netns",
    "open_vm_network",
    "socket_in_netns",
]

log = logging.getLogger(__name__)

BRIDGE: Final = "fvmbr0"
_SUBNET: Final = ipaddress.IPv4Network("10.77.0.0/24")
GATEWAY_IP: Final = "10.77.0.1"
_GUEST_OCTETS: Final = range(10, 250)
_CLONE_NEWNET: Final = 0x40000000
_NETNS_DIR: Final = Path("/run/netns")
_DNSMASQ_STOP_S: Final = 5.0
# The name of the netns this run dir's driver made, so a later run removes it if left behind.
_NAME_FILE: Final = "netns-name"
# The names this module makes: fvm- (the VMs' network), fmn- (a bare one, e.g. the mesh's).
_PREFIXES: Final = ("fvm-", "fmn-")


@dataclass(frozen=True, slots=True)
class Lease:
    """A VM's place on the bridge: its tap (inside the netns), MAC and reserved address."""

    key: str
    tap: str
    mac: str
    ip: str


_libc: Any = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into a network namespace failed: {os.strerror(err)}")


def _socket_in_thread(ns_path: Path, family: int, kind: int) -> socket.socket:
    """Run in a fresh thread: enter the namespace, make the socket, let the thread die."""
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(socket.socket(family, kind))
        except BaseException as e:  # handed to the caller below
            result.append(e)

    thread = threading.Thread(target=run, name="fvm-netns-socket", daemon=True)
    thread.start()
    thread.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


async def socket_in_netns(
    name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new (blocking, unconnected) socket of the network namespace ``name``."""
    return await trio.to_thread.run_sync(_socket_in_thread, _NETNS_DIR / name, family, kind)


class VmNetwork:
    """The open network of one driver; made by ``open_vm_network``."""

    def __init__(self, name: str, run_dir: Path, ns: Any) -> None:
        self.name = name
        self.run_dir = run_dir
        self._ns = ns
        self._leases: dict[str, Lease] = {}
        self._tap_serial = 0
        self._dnsmasq: trio.Process | None = None
        self.hosts_file = run_dir / "dhcp-hosts"
        self.hosts_file.write_text("")

    @property
    def leases(self) -> dict[str, Lease]:
        return dict(self._leases)

    def add_tap(self, key: str) -> Lease:
        """The VM's tap, MAC and address (the same Lease again if it has one)."""
        if key in self._leases:
            return self._leases[key]
        used = {int(ipaddress.IPv4Address(lease.ip)) & 0xFF for lease in self._leases.values()}
        octet = next((o for o in _GUEST_OCTETS if o not in used), None)
        if octet is None:
            raise OSError(f"the VM network {self.name} has no free address left")
        self._tap_serial += 1
        tap = f"fvt{self._tap_serial}"
        lease = Lease(key, tap, f"52:54:00:77:00:{octet:02x}", str(_SUBNET[octet]))
        bridge = self._ns.link_lookup(ifname=BRIDGE)[0]
        self._ns.link("add", ifname=tap, kind="tuntap", mode="tap")
        index = self._ns.link_lookup(ifname=tap)[0]
        self._ns.link("set", index=index, master=bridge, state="up")
        self._leases[key] = lease
        self._write_hosts()
        return lease

    def remove_tap(self, key: str) -> None:
        lease = self._leases.pop(key, None)
        if lease is None:
            return
        with contextlib.suppress(Exception):  # already gone is fine
            for index in self._ns.link_lookup(ifname=lease.tap):
                self._ns.link("del", index=index)
        self._write_hosts()

    def counters(self, key: str) -> tuple[int, int] | None:
        """(guest rx bytes, guest tx bytes) of the VM's tap, None if unknown. The tap's own tx
        is what the guest received."""
        lease = self._leases.get(key)
        if lease is None:
            return None
        try:
            links = self._ns.get_links(*self._ns.link_lookup(ifname=lease.tap))
            stats = links[0].get_attr("IFLA_STATS64")
            return int(stats["tx_bytes"]), int(stats["rx_bytes"])
        except Exception:  # a tap mid-removal: unknown, not an error
            return None

    def _write_hosts(self) -> None:
        text = "".join(f"{lease.mac},{lease.ip}\n" for lease in self._leases.values())
        tmp = self.hosts_file.with_name(self.hosts_file.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.hosts_file)
        proc = self._dnsmasq
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGHUP)  # dnsmasq rereads --dhcp-hostsfile

    async def _start_dnsmasq(self) -> None:
        log_path = self.run_dir / "dnsmasq.log"
        argv = [
            "ip",
            "netns",
            "exec",
            self.name,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--interface={BRIDGE}",
            "--bind-interfaces",
            "--except-interface=lo",
            f"--dhcp-range={_SUBNET[_GUEST_OCTETS[0]]},static,{_SUBNET.netmask},12h",
            f"--dhcp-hostsfile={self.hosts_file}",
            f"--dhcp-leasefile={self.run_dir / 'dnsmasq.leases'}",
            "--dhcp-authoritative",
            "--no-ping",
            "--port=0",
            "--user=root",
            "--log-dhcp",
            "--log-facility=-",
        ]
        with log_path.open("ab") as out:
            self._dnsmasq = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    async def _stop_dnsmasq(self) -> None:
        proc = self._dnsmasq
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with trio.move_on_after(_DNSMASQ_STOP_S):
            await proc.wait()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _create(name: str, run_dir: Path, *, bridge: bool = True) -> Any:
    run_dir.mkdir(parents=True, exist_ok=True)
    # Named before it exists: a kill between the two leaves a name the next run ignores.
    (run_dir / _NAME_FILE).write_text(name + "\n")
    netns.create(name)
    ns = NetNS(name)
    try:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        if not bridge:
            return ns
        ns.link("add", ifname=BRIDGE, kind="bridge")
        bridge = ns.link_lookup(ifname=BRIDGE)[0]
        ns.addr("add", index=bridge, address=GATEWAY_IP, prefixlen=_SUBNET.prefixlen)
        ns.link("set", index=bridge, state="up")
    except BaseException:
        ns.close()
        raise
    return ns


def _remove(name: str, ns: Any) -> None:
    with contextlib.suppress(Exception):
        ns.close()
    if (_NETNS_DIR / name).exists():
        netns.remove(name)


def _forget(run_dir: Path) -> None:
    (run_dir / _NAME_FILE).unlink(missing_ok=True)


def _remove_stale(run_dir: Path) -> str | None:
    """Remove the netns an earlier run of this driver left (a node killed with SIGKILL cannot
    clean up): kill what still runs in it (its QEMUs, its dnsmasq), then delete it. Returns its
    name, or None when there was none. Only a namespace named in this run dir is touched."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / _NAME_FILE
    try:
        name = record.read_text().strip()
    except FileNotFoundError:
        return None
    if not name.startswith(_PREFIXES) or not (_NETNS_DIR / name).exists():
        record.unlink(missing_ok=True)
        return None
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    for pid in pids.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(Exception):
        netns.remove(name)
    record.unlink(missing_ok=True)
    return name


@asynccontextmanager
async def open_vm_network(run_dir: Path) -> AsyncIterator[VmNetwork]:
    """A fresh VM netns with its bridge and dnsmasq; everything removed on exit. What an
    earlier run that was killed left behind is removed first."""
    stale = await trio.to_thread.run_sync(_remove_stale, run_dir)
    if stale is not None:
        log.warning("removed VM network %s left by an earlier run (and what ran in it)", stale)
    name = f"fvm-{secrets.token_hex(4)}"
    try:
        ns = _create(name, run_dir)
    except BaseException:
        with contextlib.suppress(Exception):
            if (_NETNS_DIR / name).exists():
                netns.remove(name)
        raise
    network = VmNetwork(name, run_dir, ns)
    try:
        await network._start_dnsmasq()
        log.info("VM network %s: bridge %s %s/24, dnsmasq", name, BRIDGE, GATEWAY_IP)
        yield network
    finally:
        with trio.CancelScope(shield=True):
            await network._stop_dnsmasq()
            _remove(name, ns)
            _forget(run_dir)
            log.info("VM network %s removed", name)


@asynccontextmanager
async def open_netns(run_dir: Path, prefix: str = "fmn") -> AsyncIterator[str]:
    """A fresh, empty namespace ``<prefix>-<8 hex>`` (loopback up) for a node's own devices,
    recorded in ``run_dir`` as the VM network is (a killed run's is removed at the next
    start, with what runs in it); removed on exit. Yields its name."""
    if f"{prefix}-" not in _PREFIXES:
        raise ValueError(f"netns prefix must be one of {_PREFIXES}")
    stale = await trio.to_thread.run_sync(_remove_stale, run_dir)
    if stale is not None:
        log.warning("removed network namespace %s left by an earlier run", stale)
    name = f"{prefix}-{secrets.token_hex(4)}"
    try:
        ns = _create(name, run_dir, bridge=False)
    except BaseException:
        with contextlib.suppress(Exception):
            if (_NETNS_DIR / name).exists():
                netns.remove(name)
        raise
    try:
        yield name
    finally:
        _remove(name, ns)
        _forget(run_dir)
