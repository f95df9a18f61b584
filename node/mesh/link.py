"""The mesh link: this node's WireGuard interface, kept equal to the replicated mesh view.

Theory of operation
-------------------
Addresses and keys are replicated state (``node.ledger.mesh``); this module is the thin Trio
driver that makes the data path follow them, and a few pure functions it is made of.

* **Where things live.** ``wireguard-go`` (``node.mesh.wireguard``) runs in the node's own
  network namespace, so its UDP socket faces the network the node's libp2p faces (loopback on
  a one-machine fog, the veth in the namespace test). Its TUN moves into the node's *mesh
  namespace* before it gets its ``10.42.x.y`` address: the VMs' namespace when the node runs
  QEMU VMs (so the host can route for them), else a bare ``fmn-<hex>`` namespace the node
  makes. The host's own namespace never holds a mesh address (the hard rule), and a process
  reaches the mesh with ``ip netns exec <mesh netns>`` (``formation-node status`` names it).
* **From the view.** Every ``poll_s`` the link reads ``mesh_view`` and (1) gives the interface
  the node's address (a lost claim's successor replaces it in place), (2) publishes
  ``mesh.key {public_key, endpoint, listen_port}`` when what the view holds for this node
  differs (first start, a new port or endpoint), (3) sets the peers to every other node that
  holds an address and a key with an endpoint and that the membership has not declared dead
  or seen leave (``wanted_peers``): allowed IPs are the peer's address and the addresses of
  the slots it hosts. ``WireGuard.set_peers`` changes only what
  changed, so a join or leave elsewhere costs no handshake between unchanged peers, and no
  restart ever.
* **Instances.** A slot this node hosts has its own mesh address (claimed by
  ``node.mesh.service``); other nodes route it to this node (allowed IPs). Here, in the VMs'
  namespace, an nftables table (``nat_ruleset``) DNATs the slot's mesh address to the guest's
  bridge address and SNATs the guest's own traffic into the mesh from its slot address, with
  IPv4 forwarding on in that namespace only. The guest needs no WireGuard and no
  configuration: it sees connections from mesh addresses and answers through its gateway.
* **Killed nodes.** wireguard-go is a child in the node's namespace, so a node killed with
  SIGKILL leaves it running; its pid and interface are kept in ``<data_dir>/mesh/wg-pid`` and
  the next start stops it first (the stale namespace itself goes with ``node.vmm.netns``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Final

import trio

from node.ledger.mesh import MeshView, mesh_view, node_subject
from node.mesh.wireguard import (
    UAPI_DIR,
    Peer,
    UapiError,
    WireGuard,
    key_from_base64,
    key_to_base64,
    load_or_create_key,
    new_ifname,
    open_wireguard,
    public_key_of,
)
from node.placement.service import NodeHost

__all__ = [
    "NAT_TABLE",
    "MeshLink",
    "endpoint_host_of",
    "nat_pairs",
    "nat_ruleset",
    "wanted_peers",
]

log = logging.getLogger(__name__)

POLL_S: Final = 1.0
RETRY_S: Final = 5.0
NAT_TABLE: Final = "formation_mesh"
_PID_FILE: Final = Path("mesh") / "wg-pid"
_STALE_STOP_S: Final = 3.0


# ---------------------------------------------------------------- pure parts


def endpoint_host_of(listen_addrs: Iterable[str], override: str = "") -> str | None:
    """The IP other nodes reach this node's WireGuard port on: ``override`` when given, else
    the first IPv4 listen multiaddr's host that is not the wildcard (None: ask the operator)."""
    if override:
        ipaddress.ip_address(override)  # a literal: wireguard-go resolves no names
        return override
    for addr in listen_addrs:
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] == "ip4" and parts[2] not in ("0.0.0.0", ""):
            return parts[2]
    return None


def wanted_peers(
    peers: Sequence[Mapping[str, Any]],
    me: str,
    gone: Callable[[str], bool] = lambda node_id: False,
    keepalive_s: int | None = None,
) -> list[Peer]:
    """The WireGuard peers ``MeshView.peers()`` asks of node ``me``: every other node with an
    endpoint that ``gone`` (the membership's DEAD or LEFT) does not name. A node without an
    endpoint cannot be reached first; it waits for its key op. A suspect node stays: dropping
    it would cost a fresh handshake each time a suspicion clears."""
    out = []
    for peer in peers:
        if peer["node_id"] == me or not peer.get("endpoint") or gone(peer["node_id"]):
            continue
        out.append(
            Peer(
                public_key=key_from_base64(peer["public_key"]),
                endpoint=peer["endpoint"],
                allowed_ips=list(peer["allowed_ips"]),
                keepalive_s=keepalive_s,
            )
        )
    return out


def nat_pairs(
    view: MeshView, me: str, guest_ip_of: Callable[[str, int], str | None]
) -> list[tuple[str, str]]:
    """``(slot mesh address, guest bridge address)`` for the slots ``me`` hosts that have both."""
    pairs = []
    for subject, host in sorted(view.slot_hosts.items()):
        if host != me:
            continue
        address = view.address_of(subject)
        _, instance_id, slot = subject.split(":")
        guest = guest_ip_of(instance_id, int(slot))
        if address is not None and guest is not None:
            pairs.append((address, guest))
    return pairs


def nat_ruleset(pairs: Sequence[tuple[str, str]], mesh_cidr: str, table: str = NAT_TABLE) -> str:
    """An ``nft -f`` script that replaces ``table`` atomically with the DNAT/SNAT of ``pairs``
    (declare, flush, define: one transaction, so a change never opens a gap)."""
    ipaddress.ip_network(mesh_cidr)
    pre = []
    post = []
    for mesh_ip, guest_ip in pairs:
        ipaddress.ip_address(mesh_ip)
        ipaddress.ip_address(guest_ip)
        pre.append(f"    ip daddr {mesh_ip} dnat to {guest_ip}")
        post.append(f"    ip saddr {guest_ip} ip daddr {mesh_cidr} snat to {mesh_ip}")
    return "\n".join(
        [
            f"table ip {table} {{}}",
            f"flush table ip {table}",
            f"table ip {table} {{",
            "  chain pre {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            *pre,
            "  }",
            "  chain post {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            *post,
            "  }",
            "}",
            "",
        ]
    )


# ---------------------------------------------------------------- the driver


def _stop_stale(data_dir: Path) -> None:
    """Stop the wireguard-go a killed earlier run left (only if that pid still is it)."""
    record = data_dir / _PID_FILE
    try:
        pid_text, ifname = record.read_text().split()
        pid = int(pid_text)
    except (FileNotFoundError, ValueError):
        record.unlink(missing_ok=True)
        return
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    if b"wireguard-go" in b" ".join(argv) and ifname.encode() in argv:
        log.warning("stopping wireguard-go %s (pid %d) left by an earlier run", ifname, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        (UAPI_DIR / f"{ifname}.sock").unlink(missing_ok=True)
    record.unlink(missing_ok=True)


def _run_in_netns(netns: str, argv: list[str], stdin: str = "") -> None:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=10,
    )
    if result.returncode != 0:
        raise OSError(f"{' '.join(argv)} in netns {netns} failed: {result.stderr.strip()}")


def nat_tools_missing() -> list[str]:
    """What routing instances into the mesh needs and this machine lacks."""
    return [] if shutil.which("nft") else ["nft (Debian package nftables)"]


@dataclass
class MeshLink:
    """This node's mesh interface, following the replicated view (module docstring)."""

    host: NodeHost
    data_dir: Path
    netns: str  # the mesh namespace: where the TUN and its address live
    endpoint_host: str  # the IP other nodes send our WireGuard packets to
    listen_port: int = 0  # UDP; 0: any free port (published in mesh.key)
    guest_ip_of: Callable[[str, int], str | None] | None = None  # routes VMs when given
    gone: Callable[[str], bool] = lambda node_id: False  # the membership's DEAD or LEFT
    poll_s: float = POLL_S
    rng: Random | None = None
    wg: WireGuard | None = None
    note: str = "starting"
    key_ops: int = 0
    peer_count: int = 0
    peers_handshaken: int = 0
    peer_ids: list[str] = field(default_factory=list)
    _nat: tuple[tuple[str, str], ...] | None = None
    _public_key_b64: str = ""
    _forwarding: bool = field(default=False, repr=False)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        private = await trio.to_thread.run_sync(load_or_create_key, self.data_dir)
        self._public_key_b64 = key_to_base64(public_key_of(private))
        await trio.to_thread.run_sync(_stop_stale, self.data_dir)
        task_status.started(self)
        while True:
            try:
                await self._serve(private)
            except (OSError, UapiError, ValueError) as exc:
                self.wg = None
                self.note = f"down: {exc}; retrying in {RETRY_S:g} s"
                log.error("mesh link: %s", self.note)
                await trio.sleep(RETRY_S)

    async def _serve(self, private: bytes) -> None:
        self.note = "waiting for this node's mesh address"
        address = None
        while address is None:  # claimed by node.mesh.service within a poll or two
            view = self._view()
            address = view.address_of(node_subject(self.host.address))
            if address is None:
                await trio.sleep(self.poll_s)
        prefix = ipaddress.ip_network(view.cidr).prefixlen
        async with open_wireguard(
            netns=None,
            tun_netns=self.netns,
            ifname=new_ifname(self.rng),
            private_key=private,
            listen_port=self.listen_port,
            address_cidr=f"{address}/{prefix}",
        ) as wg:
            record = self.data_dir / _PID_FILE
            await trio.Path(record).write_text(f"{wg.pid} {wg.ifname}\n")
            self.wg = wg
            self._nat = None
            try:
                while True:
                    await self.step()
                    await trio.sleep(self.poll_s)
            finally:
                self.wg = None
                record.unlink(missing_ok=True)

    def _view(self) -> MeshView:
        view: MeshView = self.host.read(mesh_view)
        return view

    async def step(self) -> None:
        """Make the interface, the published key, the peers and the VM routes match the view."""
        wg = self.wg
        if wg is None:
            return
        me = self.host.address
        view = self._view()
        address = view.address_of(node_subject(me))
        if address is not None:
            await wg.set_address(f"{address}/{ipaddress.ip_network(view.cidr).prefixlen}")
        wanted_key = {
            "public_key": self._public_key_b64,
            "endpoint": f"{self.endpoint_host}:{wg.listen_port}",
            "listen_port": wg.listen_port,
        }
        if dict(view.keys.get(me) or {}) != wanted_key:
            self.key_ops += 1
            await self.host.write("mesh.key", wanted_key)
        wanted = view.peers()
        peers = wanted_peers(wanted, me, self.gone)
        await wg.set_peers(peers)
        keys = {key_to_base64(p.public_key) for p in peers}
        self.peer_ids = sorted(p["node_id"] for p in wanted if p["public_key"] in keys)
        self.peer_count = len(peers)
        status = await wg.peers_status()
        self.peers_handshaken = sum(1 for p in status if p.get("last_handshake_s"))
        if self.guest_ip_of is not None:
            await self._route_guests(view, me)
        self.note = f"up: {wg.ifname} {wg.address_cidr} in netns {self.netns}, {len(peers)} peers"

    async def _route_guests(self, view: MeshView, me: str) -> None:
        assert self.guest_ip_of is not None
        pairs = tuple(nat_pairs(view, me, self.guest_ip_of))
        if pairs == self._nat:
            return
        if not self._forwarding:
            await trio.to_thread.run_sync(
                _run_in_netns, self.netns, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]
            )
            self._forwarding = True
        script = nat_ruleset(pairs, view.cidr)
        await trio.to_thread.run_sync(_run_in_netns, self.netns, ["nft", "-f", "-"], script)
        self._nat = pairs
        log.info("mesh: routing %d instance slot(s) to their guests", len(pairs))

    def status(self) -> dict[str, Any]:
        """What ``formation-node status`` shows of the mesh (as of the last step)."""
        wg = self.wg
        out: dict[str, Any] = {
            "note": self.note,
            "netns": self.netns,
            "public_key": self._public_key_b64,
        }
        if wg is not None:
            out.update(
                interface=wg.ifname,
                address=wg.address_cidr,
                endpoint=f"{self.endpoint_host}:{wg.listen_port}",
                peers=self.peer_count,
                peer_ids=list(self.peer_ids),
                peers_handshaken=self.peers_handshaken,
            )
        return out
