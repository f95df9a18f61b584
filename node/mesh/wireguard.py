"""The mesh's data path: userspace WireGuard (``wireguard-go``) on a TUN inside a netns.

Long on purpose: the daemon's life cycle and the UAPI text protocol it is driven by are one
contract; the protocol half is pure functions tested byte for byte on their own.

Theory of operation
-------------------
These hosts' kernels have no WireGuard module (``ip link add … type wireguard`` fails), so a
node runs Debian's ``wireguard-go``: the real WireGuard protocol (interoperable with kernel
WireGuard) on a TUN device. ``open_wireguard`` starts ``wireguard-go -f <ifname>`` (inside
the node's network namespace through ``ip netns exec`` when ``netns`` is given, which execs
in place, so the watched process *is* wireguard-go), waits for its control socket
``/var/run/wireguard/<ifname>.sock``, sets the private key and listen port over it, then
gives the TUN its mesh address and brings it up with pyroute2 inside that namespace. On exit
(error and cancel included) wireguard-go is terminated (it removes its TUN and socket),
killed if it lingers, and any leftover link or socket file is removed.

With ``tun_netns`` the TUN is moved into that namespace before it gets its address, while
wireguard-go and its UDP socket stay in ``netns`` (the node's own): the encrypted side faces
the network, the clear side lives in a namespace of its own. wireguard-go keeps its TUN file
descriptor across the move, and the UAPI socket stays where it was (measured here: handshake
and ping through a moved TUN; SIGTERM still removes it).

Configuration speaks the UAPI text protocol (the one ``wg`` speaks to userspace daemons)
directly over the unix socket from Trio; no ``wg`` binary is needed. A request is lines of
``key=value`` ended by an empty line: ``set=1`` followed by device keys and then, per peer,
``public_key=<hex>`` and that peer's keys; ``get=1`` returns the same shape. Every reply ends
with ``errno=<n>`` and an empty line; non-zero means the daemon refused the request, which
raises ``UapiError``. The formatting and parsing here are pure functions
(``set_device_request``, ``peers_request``, ``parse_get``, ``parse_errno``) so the unit tests
check them byte for byte against a fake socket server.

``WireGuard.set_peers`` replaces the peer set without a restart and without disturbing
peers that did not change: it reads the current peers (``get=1``), then sends one ``set=1``
that removes the peers no longer wanted (``remove=true``), and adds or rewrites only the ones
whose endpoint, keepalive or allowed IPs differ (``replace_allowed_ips=true``). A peer left
untouched keeps its session, so a join or leave elsewhere in the fog causes no new handshake
between unchanged peers. Endpoints must be IP literals (``1.2.3.4:51820``, ``[::1]:51820``):
wireguard-go does not resolve names.

Interface names must be unique machine-wide, not only per namespace: every wireguard-go
puts its socket in the one folder ``/var/run/wireguard`` (namespaces do not separate it), and
a second ``wg0`` fails with "UAPI listen error: unix socket in use". Callers therefore name
interfaces ``fm`` + 8 random hex digits (``new_ifname(rng)``), 10 characters (Linux allows 15);
``open_wireguard`` refuses a name whose socket a live daemon answers on rather than take it
over (a socket file left by a killed daemon, which refuses connections, is removed).

Keys are X25519 (the ``cryptography`` package): 32 raw bytes, shown in base64 (44
characters, as ``wg`` prints them) and in hex on the UAPI. ``load_or_create_key`` keeps the
node's private key in ``<data_dir>/mesh/wg.key`` (base64, mode 0600, created exclusively so
two starts never write two keys); only the public key leaves the data dir.

Two peers configured at once: the responder should know the initiator before the
initiator's first packet, or that first handshake waits for wireguard-go's 5 s retry
(measured in ../shared/reference/vm-and-network.md); a small keepalive on one side makes it
initiate.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import IO, Any, Final

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

__all__ = [
    "KEY_BYTES",
    "UAPI_DIR",
    "DeviceState",
    "Peer",
    "UapiError",
    "WireGuard",
    "generate_private_key",
    "key_from_base64",
    "key_to_base64",
    "load_or_create_key",
    "new_ifname",
    "open_wireguard",
    "parse_errno",
    "parse_get",
    "peers_request",
    "public_key_of",
    "set_device_request",
    "uapi_call",
    "wireguard_tools_missing",
]

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32
UAPI_DIR: Final = Path("/var/run/wireguard")
_NETNS_DIR: Final = Path("/run/netns")
_IFNAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_KEY_FILE: Final = Path("mesh") / "wg.key"
# A get reply is a few lines per peer; a fog's mesh of thousands of peers stays well under this.
_UAPI_REPLY_BYTES_MAX: Final = 8 * 1024 * 1024
_UAPI_TIMEOUT_S: Final = 5.0
_SOCKET_WAIT_S: Final = 10.0
_STOP_WAIT_S: Final = 5.0
_STDERR_TAIL_BYTES: Final = 4096
_KEEPALIVE_S_MAX: Final = 65535


class UapiError(OSError):
    """wireguard-go refused a UAPI request (its ``errno=`` was not 0) or the reply was bad."""


# ---------------------------------------------------------------- keys


def generate_private_key() -> bytes:
    """A fresh X25519 private key, 32 raw bytes (clamping is applied by X25519 itself)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key (32 raw bytes) of a 32-byte private key."""
    _check_key(private_key, "private_key")
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def key_to_base64(key: bytes) -> str:
    """The 44-character base64 form ``wg`` prints and ``mesh.key`` ops carry."""
    _check_key(key, "key")
    return base64.b64encode(key).decode("ascii")


def key_from_base64(text: str) -> bytes:
    """32 raw key bytes from their base64 form; ValueError naming the problem otherwise."""
    if not isinstance(text, str) or len(text) != 44:
        raise ValueError("a WireGuard key in base64 is 44 characters (32 bytes)")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(f"a WireGuard key must be base64: {e}") from None
    _check_key(raw, "key")
    return raw


def load_or_create_key(data_dir: Path) -> bytes:
    """The node's private key from ``<data_dir>/mesh/wg.key``, made (mode 0600) if absent."""
    path = Path(data_dir) / _KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        try:
            return key_from_base64(text)
        except ValueError as e:
            raise ValueError(f"{path} does not hold a WireGuard private key: {e}") from None
    key = generate_private_key()
    try:
        with os.fdopen(fd, "w") as out:
            out.write(key_to_base64(key) + "\n")
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return key


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} raw bytes")


# ---------------------------------------------------------------- peers and the UAPI text


@dataclass(frozen=True, slots=True)
class Peer:
    """One WireGuard peer as the mesh wants it: key, optional ``ip:port`` endpoint, the
    addresses routed to it and an optional keepalive (seconds, None = off)."""

    public_key: bytes
    endpoint: str | None = None
    allowed_ips: list[str] = field(default_factory=list)
    keepalive_s: int | None = None

    def __post_init__(self) -> None:
        _check_key(self.public_key, "Peer.public_key")
        if self.endpoint is not None:
            _check_endpoint(self.endpoint)
        for cidr in self.allowed_ips:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as e:
                raise ValueError(f"Peer.allowed_ips: {cidr!r} is not a network: {e}") from None
        if self.keepalive_s is not None and not 1 <= self.keepalive_s <= _KEEPALIVE_S_MAX:
            raise ValueError(f"Peer.keepalive_s must be 1..{_KEEPALIVE_S_MAX} or None")

    def normalized(self) -> tuple[str | None, frozenset[str], int]:
        """What the daemon stores: compared to decide whether a peer changed."""
        ips = frozenset(str(ipaddress.ip_network(c)) for c in self.allowed_ips)
        return _normal_endpoint(self.endpoint), ips, self.keepalive_s or 0


def _check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"endpoint {endpoint!r} must be ip:port with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        version = 6
    else:
        version = 4
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"endpoint {endpoint!r}: the host must be an IP literal (wireguard-go does not "
            "resolve names); write IPv6 as [addr]:port"
        ) from None
    if address.version != version:
        raise ValueError(f"endpoint {endpoint!r}: write IPv6 as [addr]:port")


def _normal_endpoint(endpoint: str | None) -> str | None:
    if endpoint is None:
        return None
    host, _, port = endpoint.rpartition(":")
    address = ipaddress.ip_address(host.strip("[]"))
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def set_device_request(*, private_key: bytes | None = None, listen_port: int | None = None) -> str:
    """The ``set=1`` request that sets the device's key and/or port."""
    lines = ["set=1"]
    if private_key is not None:
        _check_key(private_key, "private_key")
        lines.append(f"private_key={private_key.hex()}")
    if listen_port is not None:
        if not 0 <= listen_port <= 65535:
            raise ValueError("listen_port must be 0..65535 (0: the daemon picks one)")
        lines.append(f"listen_port={listen_port}")
    return "\n".join(lines) + "\n\n"


def peers_request(current: Mapping[bytes, Peer], wanted: Iterable[Peer]) -> str | None:
    """The ``set=1`` request that turns the ``current`` peers (by key) into ``wanted``:
    removes the missing, (re)writes the new or changed, leaves the equal ones alone. None when
    nothing differs. Two wanted peers with one key are an error (the daemon keeps one)."""
    want: dict[bytes, Peer] = {}
    for peer in wanted:
        if peer.public_key in want:
            raise ValueError(f"two peers with the key {key_to_base64(peer.public_key)}")
        want[peer.public_key] = peer
    lines = ["set=1"]
    for key in sorted(k for k in current if k not in want):
        lines += [f"public_key={key.hex()}", "remove=true"]
    for key in sorted(want):
        peer = want[key]
        old = current.get(key)
        if old is not None and old.normalized() == peer.normalized():
            continue
        lines.append(f"public_key={key.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={_normal_endpoint(peer.endpoint)}")
        lines.append(f"persistent_keepalive_interval={peer.keepalive_s or 0}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={ipaddress.ip_network(c)}" for c in peer.allowed_ips]
    if len(lines) == 1:
        return None
    return "\n".join(lines) + "\n\n"


def parse_errno(reply: str) -> int:
    """The ``errno=`` of a reply (the last key of every reply)."""
    for line in reversed(reply.splitlines()):
        if line.startswith("errno="):
            value = line.removeprefix("errno=")
            if not value.lstrip("-").isdigit():
                raise UapiError(f"UAPI reply has a bad errno line: {line!r}")
            return int(value)
    raise UapiError("UAPI reply has no errno line")


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A ``get=1`` reply: the device's port and its peers (key -> Peer, key -> counters)."""

    listen_port: int
    public_key: bytes | None
    peers: dict[bytes, Peer]
    status: dict[bytes, dict[str, Any]]


def parse_get(reply: str) -> DeviceState:
    """Parse a ``get=1`` reply (UapiError when errno is not 0 or a line is malformed)."""
    errno = parse_errno(reply)
    if errno != 0:
        raise UapiError(f"wireguard-go refused get: errno={errno}")
    listen_port = 0
    device_key: bytes | None = None
    raw: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in reply.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"UAPI reply line without '=': {line!r}")
        if key == "public_key":
            current = {"public_key": _hex_key(value), "allowed_ips": []}
            raw.append(current)
        elif current is None:
            if key == "listen_port":
                listen_port = int(value)
            elif key == "private_key":
                device_key = public_key_of(_hex_key(value)) if int(value, 16) else None
        elif key == "allowed_ip":
            current["allowed_ips"].append(value)
        elif key in ("endpoint", "protocol_version"):
            current[key] = value
        elif key in (
            "persistent_keepalive_interval",
            "last_handshake_time_sec",
            "last_handshake_time_nsec",
            "rx_bytes",
            "tx_bytes",
        ):
            current[key] = int(value)
    peers: dict[bytes, Peer] = {}
    status: dict[bytes, dict[str, Any]] = {}
    for item in raw:
        key = item["public_key"]
        keepalive = item.get("persistent_keepalive_interval", 0)
        peers[key] = Peer(key, item.get("endpoint"), item["allowed_ips"], keepalive or None)
        seconds = item.get("last_handshake_time_sec", 0)
        nanos = item.get("last_handshake_time_nsec", 0)
        status[key] = {
            "public_key": key_to_base64(key),
            "endpoint": item.get("endpoint"),
            "allowed_ips": list(item["allowed_ips"]),
            # 0 means "never": the daemon reports no handshake as the epoch.
            "last_handshake_s": seconds + nanos / 1e9 if seconds else None,
            "rx_bytes": item.get("rx_bytes", 0),
            "tx_bytes": item.get("tx_bytes", 0),
            "keepalive_s": keepalive or None,
        }
    return DeviceState(listen_port, device_key, peers, status)


def _hex_key(value: str) -> bytes:
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise UapiError(f"UAPI reply has a bad key: {value!r}") from None
    if len(key) != KEY_BYTES:
        raise UapiError(f"UAPI reply has a key of {len(key)} bytes")
    return key


# ---------------------------------------------------------------- socket I/O


async def uapi_call(sock_path: Path, request: str, *, timeout_s: float = _UAPI_TIMEOUT_S) -> str:
    """Send one UAPI request and return the whole reply (up to its ending empty line).
    A ``set`` whose errno is not 0 raises UapiError; a ``get`` reply is returned as is."""
    if not request.endswith("\n\n"):
        raise ValueError("a UAPI request ends with an empty line")
    with trio.fail_after(timeout_s):
        stream = await trio.open_unix_socket(str(sock_path))
        async with stream:
            await stream.send_all(request.encode("ascii"))
            buf = bytearray()
            while not (buf.endswith(b"\n\n") and b"errno=" in buf):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise UapiError(f"{sock_path} closed before the reply ended")
                buf += chunk
                if len(buf) > _UAPI_REPLY_BYTES_MAX:
                    raise UapiError(f"{sock_path} reply exceeds {_UAPI_REPLY_BYTES_MAX} bytes")
    reply = buf.decode("ascii", errors="replace")
    if request.startswith("set="):
        errno = parse_errno(reply)
        if errno != 0:
            raise UapiError(f"wireguard-go refused set: errno={errno}")
    return reply


# ---------------------------------------------------------------- the running interface


def wireguard_tools_missing() -> list[str]:
    """What ``open_wireguard`` needs and this machine lacks (empty when all is there)."""
    missing = [tool for tool in ("wireguard-go", "ip") if shutil.which(tool) is None]
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun (the TUN device wireguard-go runs on)")
    if os.geteuid() != 0:
        missing.append("root (a TUN, its address and a netns need CAP_NET_ADMIN)")
    return missing


def new_ifname(rng: Random | None = None) -> str:
    """A mesh interface name unique machine-wide in practice: ``fm`` + 8 hex digits."""
    suffix = f"{rng.getrandbits(32):08x}" if rng is not None else secrets.token_hex(4)
    return "fm" + suffix


class WireGuard:
    """One running wireguard-go interface; made by ``open_wireguard``."""

    def __init__(
        self, *, netns: str | None, ifname: str, public_key: bytes, tun_netns: str | None = None
    ) -> None:
        self.netns = netns  # where wireguard-go (and so its UDP socket) runs
        self.tun_netns = tun_netns if tun_netns is not None else netns  # where the TUN is
        self.ifname = ifname
        self.public_key = public_key
        self.sock_path = UAPI_DIR / f"{ifname}.sock"
        self.listen_port = 0
        self.pid: int | None = None
        self.address_cidr = ""
        self._lock = trio.Lock()  # one read-diff-write at a time

    async def state(self) -> DeviceState:
        return parse_get(await uapi_call(self.sock_path, "get=1\n\n"))

    async def set_peers(self, peers: list[Peer]) -> None:
        """Make the interface's peers exactly ``peers``; unchanged peers keep their sessions."""
        async with self._lock:
            request = peers_request((await self.state()).peers, peers)
            if request is not None:
                await uapi_call(self.sock_path, request)

    async def set_address(self, address_cidr: str) -> None:
        """Give the interface ``address_cidr`` in place of the one it has (a lost claim)."""
        ipaddress.ip_interface(address_cidr)
        if address_cidr != self.address_cidr:
            await trio.to_thread.run_sync(
                _configure_link, self.tun_netns, self.ifname, address_cidr, True
            )
            self.address_cidr = address_cidr

    async def peers_status(self) -> list[dict[str, Any]]:
        """Per peer: public_key (base64), endpoint, allowed_ips, last_handshake_s (unix time or
        None), rx_bytes, tx_bytes, keepalive_s; sorted by key."""
        status = (await self.state()).status
        return [status[k] for k in sorted(status)]


def _check_ifname(ifname: str) -> None:
    if not _IFNAME_RE.match(ifname):
        raise ValueError(
            f"interface name {ifname!r} must be 1..15 of [A-Za-z0-9_.-] (use new_ifname())"
        )


def _open_ns(netns: str | None) -> Any:
    from pyroute2 import IPRoute, NetNS  # type: ignore[import-untyped]

    return NetNS(netns) if netns is not None else IPRoute()


def _move_link(netns: str | None, ifname: str, tun_netns: str) -> None:
    ns = _open_ns(netns)
    try:
        ns.link("set", index=ns.link_lookup(ifname=ifname)[0], net_ns_fd=tun_netns)
    finally:
        ns.close()


def _configure_link(
    netns: str | None, ifname: str, address_cidr: str, replace: bool = False
) -> None:
    interface = ipaddress.ip_interface(address_cidr)
    ns = _open_ns(netns)
    try:
        index = ns.link_lookup(ifname=ifname)[0]
        if replace:
            ns.flush_addr(index=index)
        ns.addr(
            "add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen
        )
        ns.link("set", index=index, state="up")
    finally:
        ns.close()


def _remove_link(netns: str | None, ifname: str) -> None:
    if netns is not None and not (_NETNS_DIR / netns).exists():
        return
    ns = _open_ns(netns)
    try:
        for index in ns.link_lookup(ifname=ifname):
            ns.link("del", index=index)
    finally:
        ns.close()


async def _wait_for_socket(sock_path: Path, proc: trio.Process, out: IO[bytes]) -> None:
    with trio.move_on_after(_SOCKET_WAIT_S):
        while True:
            if proc.returncode is not None:
                raise OSError(
                    f"wireguard-go exited ({proc.returncode}) before its socket appeared: "
                    f"{_tail_of(out)}"
                )
            # Not there yet is FileNotFoundError / ConnectionRefusedError: try again.
            with contextlib.suppress(OSError, UapiError):
                parse_get(await uapi_call(sock_path, "get=1\n\n", timeout_s=1.0))
                return
            await trio.sleep(0.02)
    raise OSError(f"wireguard-go's socket {sock_path} did not answer in {_SOCKET_WAIT_S} s")


async def _socket_in_use(sock_path: Path) -> bool:
    """Whether a live daemon answers on ``sock_path``. A socket file nobody listens on (its
    daemon was killed with SIGKILL) is removed, so a restart may reuse the name."""
    try:
        stream = await trio.open_unix_socket(str(sock_path))
    except FileNotFoundError:
        return False
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            await trio.Path(sock_path).unlink()
        log.warning("removed %s: left by a wireguard-go that is gone", sock_path)
        return False
    await stream.aclose()
    return True


def _tail_of(out: IO[bytes]) -> str:
    """The last few KiB wireguard-go wrote: enough to say why it stopped."""
    out.seek(0, os.SEEK_END)
    out.seek(max(0, out.tell() - _STDERR_TAIL_BYTES))
    return out.read().decode(errors="replace").strip()


async def _stop(proc: trio.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()  # wireguard-go removes its TUN and socket on SIGTERM
        with trio.move_on_after(_STOP_WAIT_S):
            await proc.wait()
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@asynccontextmanager
async def open_wireguard(
    *,
    netns: str | None,
    ifname: str,
    private_key: bytes,
    listen_port: int,
    address_cidr: str,
    tun_netns: str | None = None,
) -> AsyncIterator[WireGuard]:
    """A configured, up wireguard-go interface ``ifname`` (in ``netns`` when given) with the
    key, UDP port and address (``10.42.0.7/16``); no peers yet. Everything is removed on exit.

    With ``tun_netns`` the TUN moves there before it gets its address, while wireguard-go and
    its UDP socket stay in ``netns``: the encrypted side faces the network the node runs on,
    the mesh side lives in a namespace of its own (the netns trick of kernel WireGuard; the
    daemon keeps its TUN file descriptor across the move, measured here)."""
    _check_ifname(ifname)
    public_key = public_key_of(private_key)
    ipaddress.ip_interface(address_cidr)  # a bad address fails before anything starts
    missing = wireguard_tools_missing()
    if missing:
        raise OSError(f"missing {missing}: run scripts/ensure-system-deps.sh run")
    for ns_name in (netns, tun_netns):
        if ns_name is not None and not (_NETNS_DIR / ns_name).exists():
            raise ValueError(f"network namespace {ns_name!r} does not exist")
    sock_path = UAPI_DIR / f"{ifname}.sock"
    if await _socket_in_use(sock_path):
        raise ValueError(
            f"{sock_path} is in use: interface names are shared by all namespaces; pick another"
        )
    argv = ["wireguard-go", "-f", ifname]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = dict(os.environ, LOG_LEVEL="error")
    # Newer wireguard-go refuses to run where a kernel module could; not these hosts, but say so.
    env["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"] = "1"
    wg = WireGuard(netns=netns, ifname=ifname, public_key=public_key, tun_netns=tun_netns)
    # Its output goes to an unnamed temporary file, not a pipe: no reader task (whose nursery
    # would wrap the caller's exceptions in groups) and no daemon blocked on a full pipe. With
    # LOG_LEVEL=error it writes a line only when something is wrong.
    out = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    try:
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    except BaseException:
        out.close()
        raise
    try:
        await _wait_for_socket(sock_path, proc, out)
        await uapi_call(
            sock_path, set_device_request(private_key=private_key, listen_port=listen_port)
        )
        wg.listen_port = (await wg.state()).listen_port
        wg.pid = proc.pid
        if tun_netns is not None and tun_netns != netns:
            await trio.to_thread.run_sync(_move_link, netns, ifname, tun_netns)
        await trio.to_thread.run_sync(_configure_link, wg.tun_netns, ifname, address_cidr)
        wg.address_cidr = address_cidr
        log.info(
            "mesh interface %s up (netns %s, %s, udp %d in netns %s)",
            ifname,
            wg.tun_netns,
            address_cidr,
            wg.listen_port,
            netns,
        )
        yield wg
    finally:
        with trio.CancelScope(shield=True):
            await _stop(proc)
            with contextlib.suppress(Exception):
                await trio.to_thread.run_sync(_remove_link, wg.tun_netns, ifname)
            sock_path.unlink(missing_ok=True)
            if proc.returncode not in (0, -15):  # -15: our SIGTERM
                log.warning(
                    "wireguard-go %s ended with %s: %s", ifname, proc.returncode, _tail_of(out)
                )
            out.close()
            log.info("mesh interface %s removed", ifname)
