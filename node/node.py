"""The composition root: builds a node from its parts and runs them in one nursery.

Long on purpose: it is the one module that knows how every service is made and started (a
``run_*`` function each), so reading it top to bottom is reading the node.

Nothing else in the project knows how the parts fit together; ``node.cli`` parses arguments,
calls this and prints. A node is made in three steps:

1. ``NodeSettings.from_config``: the config file plus the operator's overrides, checked
   (a bad ``--gateway`` is a ``StartError`` before anything is created).
2. ``open_home(settings)``: the data dir opened, i.e. the node key (which may prompt for a
   password, so it comes before any signal handler) and the replica over ``state.db`` (a
   store that is not ours is refused before anything listens). Closed last.
3. ``run_node(home)``: listens (the transport), builds the ``Node`` (``build_node``: the
   gossip core needs the listen address) and starts each service with ``nursery.start``, so
   "ready" means every service is serving. It reports the ``Node`` to ``task_status`` and
   runs until ``node.stop()``.

Start order, and why:

* transport: the node's addresses exist only once it listens; the core and the announce use them;
* gossip (the core, one sender per peer, the bootstrap dialers): every write goes through it;
* credits (``node.credits.service``): it writes the node's billing chain through gossip, and
  accepts the rights peers granted it;
* metrics: the exporter copies every part's counters (the gateway's once it serves);
* gateway: it submits writes through gossip, and billing orders through credits;
* control socket: ``status`` reads what all of the above published (URLs included);
* the ``node.announce`` op: written once every service serves, so peers that read it can
  reach the node at once;
* heartbeat: a ``node.capacity`` op every ``heartbeat_s``;
* builds: the build service (``node.pack.service``), once the node is announced (a build is
  taken only by a node whose announce says it is a ``builder``);
* placement (``node.placement.service``): every node places the slots of what it took;
* VMs (``node.vmm.supervisor`` over the driver ``choose_vmm`` picked before the announce, whose
  roles say ``vm-host``): answers placement asks from its own book and runs its VMs.

Stop order: ``node.stop()`` makes the node leave the membership (at most ``LEAVE_TIMEOUT_S``,
while gossip can still send the news), then cancels every service at once; the transport
closes its connections; ``open_home`` closes the store last, once nothing writes to it. A
service that crashes cancels the others and its exception leaves ``run_node``; the store is
closed all the same.

Signals are the caller's: ``node.cli`` installs its SIGINT/SIGTERM handlers after
``open_home`` and before it prints "running", and calls ``node.stop()`` on the first one.

Adding a service is one function ``async def run_x(node, *, task_status)`` that calls
``task_status.started(what_it_publishes)`` once it serves, and one line in ``run_node``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from node import __version__
from node.capacity import measure_capacity
from node.config import NodeConfig, load_or_create_node_key
from node.control import serve_control
from node.gossip.config import GossipConfig
from node.gossip.core import GossipCore
from node.gossip.messages import MemberState
from node.identity.keys import NodeKey
from node.metrics import NodeMetrics
from node.p2p.gossip_driver import GossipService, join_through
from node.pack.blobs import BlobStore
from node.placement.core import Resources
from node.replica import Replica

if TYPE_CHECKING:
    from node.credits.service import CreditsService
    from node.gateway.app import GatewayApp
    from node.ledger.op import Op
    from node.mesh.link import MeshLink
    from node.mesh.service import MeshService
    from node.p2p.transport import Transport
    from node.pack.service import BuildService
    from node.placement.service import PlacementService
    from node.replica import SubmitResult
    from node.vmm.driver import VmDriver
    from node.vmm.supervisor import VmSupervisor

__all__ = [
    "LEAVE_TIMEOUT_S",
    "Gateway",
    "Home",
    "Node",
    "NodeSettings",
    "StartError",
    "build_node",
    "gateway_address",
    "open_home",
    "run_node",
]

logger = logging.getLogger(__name__)

# How long a stopping node tries to tell the membership it leaves before it just goes.
LEAVE_TIMEOUT_S: Final = 2.0


class StartError(Exception):
    """The node cannot start for a reason the operator can fix (a bad --gateway, a port in use)."""


VMM_CHOICES: Final = ("auto", "qemu", "simulated", "off")
MESH_CHOICES: Final = ("auto", "on", "off")
# Members the mesh stops routing to (a SUSPECT one stays: see node.mesh.link.wanted_peers).
_GONE: Final = frozenset({MemberState.DEAD, MemberState.LEFT})
# Where the .fog DNS server answers unless told otherwise (the issue's, and dig's -p habit).
DNS_DEFAULT: Final = "127.0.0.1:5453"


def parse_vm_capacity(text: str) -> Resources:
    """``vcpus=2,memory_mb=2048,disk_gb=20[,gpus=0]`` as Resources; a ``StartError`` names
    what is wrong."""
    values: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or name not in ("vcpus", "memory_mb", "disk_gb", "gpus") or not value.isdigit():
            raise StartError(
                f"--vm-capacity: {part!r} is not NAME=INTEGER with NAME one of vcpus, memory_mb, "
                "disk_gb, gpus (e.g. vcpus=2,memory_mb=2048,disk_gb=20)"
            )
        values[name] = int(value)
    return Resources.from_json(values)


def measured_vm_capacity(data_dir: Path) -> Resources:
    """What VMs may use when the operator does not say: every core, the memory beyond 1 GiB
    for the node itself, half the free disk of the data dir."""
    measured = measure_capacity(data_dir)
    return Resources(
        vcpus=measured["cpu_total_cores"],
        memory_mb=max(0, measured["memory_total_bytes"] // 2**20 - 1024),
        disk_gb=measured["storage_available_bytes"] // 2**30 // 2,
    )


def gateway_address(
    where: str, option: str = "--gateway", *, off_ok: bool = True
) -> tuple[str, int]:
    """(host, port) of a ``HOST:PORT`` setting (``--gateway``, ``--metrics``); an empty host
    is 127.0.0.1."""
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        also = " or 'off'" if off_ok else ""
        raise StartError(
            f"{option} must be HOST:PORT (port 0 picks a free one){also}, got {where!r}"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class NodeSettings:
    """What a node runs with: its config file's settings, overridden by the operator's."""

    data_dir: Path
    network: str
    listen_addrs: tuple[str, ...]
    bootstrap: tuple[str, ...]
    gateway: str  # HOST:PORT, or "off"
    agent_networks: tuple[str, ...]
    source: str  # where the config came from: its file, or "embedded defaults"
    metrics: str = "127.0.0.1:0"  # HOST:PORT; port 0 picks a free one
    heartbeat_s: float = 30.0  # 0: no node.capacity ops
    password_file: Path | None = None  # the node key's; None: the generated one, or prompt
    vmm: str = "auto"  # qemu | simulated | off | auto (qemu where its tools are, else off)
    vm_capacity: str = ""  # what VMs may use, "vcpus=2,memory_mb=2048,disk_gb=20"; "": measured
    vm_netns: bool = True  # VM bridges, taps and addresses in a netns the node creates
    # The .fog DNS server: HOST:PORT, "off", or None for the default (DNS_DEFAULT, served only
    # when that port is free: a second node on one machine goes without, and says so).
    dns: str | None = None
    # The mesh data path (node.mesh.link): auto (where wireguard-go and root are), on, off.
    # Off unless asked: an in-process test node spawns no wireguard-go; the CLI's default is auto.
    mesh: str = "off"
    mesh_endpoint: str = ""  # the IP peers send WireGuard packets to; "": the listen address's
    mesh_port: int = 0  # WireGuard's UDP port; 0: any free one (published in mesh.key)

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        data_dir: Path,
        *,
        network: str | None = None,
        listen_addrs: Sequence[str] | None = None,
        bootstrap: Sequence[str] | None = None,
        gateway: str | None = None,
        metrics: str = "127.0.0.1:0",
        heartbeat_s: float = 30.0,
        password_file: Path | None = None,
        vmm: str = "auto",
        vm_capacity: str = "",
        vm_netns: bool = True,
        dns: str | None = None,
        mesh: str = "off",
        mesh_endpoint: str = "",
        mesh_port: int = 0,
    ) -> NodeSettings:
        """``config`` with overrides: empty ones keep the config's, except ``bootstrap=[]``
        (no bootstrap peers). Checks the gateway setting: a typo is a ``StartError`` now."""
        settings = cls(
            data_dir=data_dir,
            network=network or config.network,
            listen_addrs=tuple(listen_addrs or config.listen_addrs),
            bootstrap=tuple(bootstrap if bootstrap is not None else config.bootstrap),
            gateway=gateway or config.gateway,
            agent_networks=config.agent_networks,
            source=config.source,
            metrics=metrics,
            heartbeat_s=heartbeat_s,
            password_file=password_file,
            vmm=vmm,
            vm_capacity=vm_capacity,
            vm_netns=vm_netns,
            dns=dns,
            mesh=mesh,
            mesh_endpoint=mesh_endpoint,
            mesh_port=mesh_port,
        )
        if mesh not in MESH_CHOICES:
            raise StartError(f"--mesh must be one of {', '.join(MESH_CHOICES)}, got {mesh!r}")
        if not 0 <= mesh_port <= 65535:
            raise StartError(f"--mesh-port must be 0..65535, got {mesh_port}")
        if mesh_endpoint:
            try:
                ipaddress.ip_address(mesh_endpoint)
            except ValueError:
                raise StartError(
                    f"--mesh-endpoint must be an IP address (WireGuard resolves no names), "
                    f"got {mesh_endpoint!r}"
                ) from None
        if dns not in (None, "off"):
            gateway_address(dns, "--dns")
        if vmm not in VMM_CHOICES:
            raise StartError(f"--vmm must be one of {', '.join(VMM_CHOICES)}, got {vmm!r}")
        if vm_capacity:
            parse_vm_capacity(vm_capacity)
        if settings.gateway != "off":
            gateway_address(settings.gateway)
        gateway_address(settings.metrics, "--metrics", off_ok=False)
        return settings


@dataclass(frozen=True)
class Home:
    """The node's data dir, opened: its key and its replica (see ``open_home``)."""

    settings: NodeSettings
    key: NodeKey
    key_created: bool  # generated on this start
    replica: Replica


@contextlib.asynccontextmanager
async def open_home(settings: NodeSettings) -> AsyncIterator[Home]:
    """Load (or create) the node key, open the replica; close the replica on the way out.

    Before any service and any signal handler: reading the key may prompt for its password,
    and Ctrl-C must interrupt that prompt.
    """
    key, created = load_or_create_node_key(settings.data_dir, settings.password_file)
    replica = await trio.to_thread.run_sync(Replica.open, settings.data_dir, settings.network)
    try:
        yield Home(settings, key, created, replica)
    finally:
        # Shielded: a cancelled caller must still flush and close the store.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(replica.close)


@dataclass(frozen=True)
class Gateway:
    """A gateway that serves: where, and the app (its counters feed the metrics)."""

    url: str
    app: GatewayApp


@dataclass(eq=False)
class Node:
    """A node's parts, for the services that run on them.

    The parts are made by ``build_node``; ``run_node`` fills in what services publish
    (``metrics_url``, ``gateway``) as they start. It also stands for the node in the gateway
    (``node.gateway.app.GatewayNode``: ``replica``, ``info``, ``submit_checked``).
    """

    settings: NodeSettings
    key: NodeKey
    key_created: bool
    peer_id: str
    replica: Replica
    transport: Transport
    core: GossipCore
    gossip: GossipService
    rng: random.Random  # the node's one source of randomness (core, bootstrap backoff)
    blobs: BlobStore  # content-addressed: build contexts and images (<data_dir>/blobs)
    credits: CreditsService | None = None  # the billing chain's driver (build_node makes it)
    metrics_url: str = ""
    gateway: Gateway | None = None
    builds: BuildService | None = None  # None: this node does not build (tools missing)
    placement: PlacementService | None = None
    vms: VmSupervisor | None = None  # None: this node runs no VMs (vmm_note says why)
    vmm_name: str | None = None  # the VM driver chosen at start ("qemu", "simulated"), or None
    vmm_note: str = ""  # why that driver, or why none
    mesh: MeshService | None = None
    mesh_link: MeshLink | None = None  # None: no data path (mesh_note says why)
    mesh_note: str = ""
    dns_url: str = ""  # "HOST:PORT" the DNS server answers on, or "" (dns_note says why)
    dns_note: str = ""
    _capacity_now: trio.Event = field(default_factory=trio.Event, init=False, repr=False)
    _stop: trio.Event = field(default_factory=trio.Event, init=False, repr=False)

    def stop(self) -> None:
        """Ask ``run_node`` to leave the membership and stop every service."""
        self._stop.set()

    def capacity_changed(self) -> None:
        """Send a capacity report soon (``run_heartbeat``)."""
        self._capacity_now.set()

    @property
    def gateway_url(self) -> str | None:
        return self.gateway.url if self.gateway is not None else None

    def info(self) -> dict[str, Any]:
        """Who this node is, for the gateway's node route."""
        with self.replica.lock:  # worker threads apply ops meanwhile
            return {
                "address": self.key.address,
                "peer_id": self.peer_id,
                "network": self.settings.network,
                "version": __version__,
                "listen_addrs": self.transport.listen_addrs,
                "ops": self.replica.state.op_count,
                "state_digest": self.replica.state_digest(),
            }

    async def fetch_blob(self, digest: str, peers: Sequence[str] | None = None) -> Path:
        """The path of blob ``digest`` here, fetched from ``peers`` (default: every connected
        peer) if this node lacks it; ``node.p2p.blobs.BlobFetchError`` if none serves it."""
        from node.p2p.blobs import fetch

        chosen = list(self.transport.peers) if peers is None else list(peers)
        return await fetch(self.transport, self.blobs, digest, chosen)

    def is_node(self, address: str) -> bool:
        """Whether ``address`` announced itself as a node of this fog."""
        with self.replica.lock:
            return self.replica.state.node(address) is not None

    def vm_answer(self, what: str, instance_id: str, slot: int, bytes_max: int) -> dict[str, Any]:
        """A VM's console log or metrics, if this node runs it (``node.p2p.vm_query``)."""
        vms = self.vms
        info = vms.vm_of(instance_id, slot) if vms is not None else None
        if vms is None or info is None:
            return {"error": "not_found", "message": f"node {self.key.address} runs no such VM"}
        if what == "logs":
            return {"log": vms.driver.console_tail(info.key, bytes_max)}
        return {"metrics": vms.driver.metrics(info.key), "status": info.status}

    async def vm_query(
        self, host: str, what: str, instance_id: str, slot: int, bytes_max: int = 65536
    ) -> dict[str, Any]:
        """``vm_answer`` from ``host`` (this node, or over ``/formation/vm/1.0.0``)."""
        if host == self.key.address:
            return self.vm_answer(what, instance_id, slot, bytes_max)
        from node.p2p import vm_query

        return await vm_query.ask(self.transport, host, what, instance_id, slot, bytes_max)

    async def submit_checked(self, ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult:
        """Store, apply and spread ops already verified and checked (the gateway's writes)."""
        return await self.gossip.submit_checked(ops)

    def status(self) -> dict[str, object]:
        """What ``formation-node status`` shows."""
        replica, core, transport = self.replica, self.core, self.transport
        with replica.lock:  # worker threads apply ops meanwhile
            return {
                "address": self.key.address,
                "peer_id": self.peer_id,
                "network": self.settings.network,
                "data_dir": str(self.settings.data_dir),
                "listen_addrs": transport.listen_addrs,
                "peers": len(transport.peers),
                "members_alive": len(core.membership.alive()),
                "members": core.describe(),
                "ops": replica.state.op_count,
                "op_set_digest": replica.digest.root().hex(),
                "state_digest": replica.state_digest(),
                "store_bytes": replica.store.size_bytes(),
                "nodes_known": len(replica.state.nodes()),
                "metrics": self.metrics_url,
                "gateway": self.gateway_url,
                "vmm": self.vmm_note,
                "dns": self.dns_url or None,
                "dns_note": self.dns_note,
                "mesh_address": self.mesh.address() if self.mesh is not None else None,
                "mesh": (
                    self.mesh_link.status()
                    if self.mesh_link is not None
                    else {"note": self.mesh_note}
                ),
                "vms": self.vms.capacity() if self.vms is not None else None,
            }

    def metrics_snapshot(self) -> dict[str, object]:
        """The numbers the Prometheus exporter copies once a second."""
        core, gossip, gateway = self.core, self.gossip, self.gateway
        return {
            "ops": self.replica.state.op_count,
            "members_alive": len(core.membership.alive()),
            "peers": len(self.transport.peers),
            "store_bytes": self.replica.store.size_bytes(),
            "local_health": core.membership.local_health,
            "packets_sent": core.stats.packets_sent,
            "ops_received": core.stats.ops_received,
            "duplicates_received": core.stats.duplicates_received,
            "dropped_packets": gossip.dropped_packets,
            "bad_packets": gossip.bad_packets,
            "gateway_responses": dict(gateway.app.responses_by_status) if gateway else {},
            "agent_calls": gateway.app.proxy.calls_total if gateway else 0,
            "vms": self.vms.vm_metrics() if self.vms is not None else {},
            "vm_free": self.vms.book.free.to_json() if self.vms is not None else {},
            "placement": dataclasses.asdict(self.placement.stats) if self.placement else {},
        }


def build_node(home: Home, transport: Transport) -> Node:
    """The node's parts around a listening transport: the gossip core and its service."""
    from node.p2p import blobs as blob_protocol
    from node.p2p import vm_query
    from node.p2p.transport import peer_id_of

    # Blobs: one store, served to the gateway (node.blobs) and to peers (the blob protocol).
    blobs = BlobStore(home.settings.data_dir / "blobs")
    blob_protocol.register(transport, blobs)
    rng = random.Random(secrets.randbits(64))
    core = GossipCore(
        home.key.address, transport.listen_addrs[0], GossipConfig.lan(), rng, home.replica
    )
    node = Node(
        settings=home.settings,
        key=home.key,
        key_created=home.key_created,
        peer_id=peer_id_of(home.key),
        replica=home.replica,
        transport=transport,
        core=core,
        gossip=GossipService(core, home.replica, transport),
        rng=rng,
        blobs=blobs,
    )
    vm_query.register(transport, node.vm_answer, node.is_node)
    from node.credits.service import CreditsService
    from node.p2p import rights

    node.credits = CreditsService(_CreditsHost(node))
    rights.register(transport, node.credits.answer_ask, node.is_node)
    return node


async def run_node(home: Home, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node on ``home`` until ``node.stop()``; ``task_status`` gets the ready ``Node``.

    Raises ``StartError`` (perhaps inside an exception group) when a service cannot start for
    a reason the operator can fix, and whatever a crashed service raised.
    """
    # libp2p costs ~1 s to import: only a node that runs pays.
    from node.p2p.transport import open_transport

    listen = list(home.settings.listen_addrs)
    vmm_name, vmm_note = choose_vmm(home.settings)
    async with contextlib.AsyncExitStack() as stack:
        try:
            transport = await stack.enter_async_context(open_transport(home.key, listen))
        except ValueError as exc:  # a --listen the operator can fix
            raise StartError(f"cannot listen on {listen}: {exc}") from None
        nursery = await stack.enter_async_context(trio.open_nursery())
        node = build_node(home, transport)
        node.vmm_name, node.vmm_note = vmm_name, vmm_note
        await nursery.start(run_gossip, node)
        assert node.credits is not None
        await nursery.start(node.credits.run)
        node.metrics_url = await nursery.start(run_metrics, node)
        node.gateway = await nursery.start(run_gateway, node)
        await nursery.start(run_control, node)
        await announce(node)
        await nursery.start(run_heartbeat, node)
        node.builds = await nursery.start(run_builds, node)
        node.placement = await nursery.start(run_placement, node)
        node.vms = await nursery.start(run_vms, node)
        node.mesh = await nursery.start(run_mesh, node)
        await nursery.start(run_dns, node)
        task_status.started(node)
        await node._stop.wait()
        with trio.move_on_after(LEAVE_TIMEOUT_S):
            await node.gossip.leave()
        nursery.cancel_scope.cancel()


# The services. Each runs until cancelled and reports what it publishes once it serves.


async def run_gossip(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The gossip service, and one dialer per bootstrap peer (they retry until it answers)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(node.gossip.run)
        for addr in node.settings.bootstrap:
            nursery.start_soon(join_through, node.gossip, node.transport, addr, node.rng)
        task_status.started()


async def run_metrics(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The Prometheus exporter on ``settings.metrics``; publishes its URL."""
    metrics = NodeMetrics()
    host, port = gateway_address(node.settings.metrics, "--metrics", off_ok=False)
    try:
        url = metrics.serve(host, port)
    except OSError as exc:
        raise StartError(
            f"cannot serve metrics on {node.settings.metrics}: {exc.strerror or exc}; pass "
            "--metrics HOST:PORT (port 0 picks a free one)"
        ) from None
    try:
        task_status.started(url)
        await metrics.run(node.metrics_snapshot)
    finally:
        # The exporter is a thread of prometheus_client's; stop it with the node, so an
        # in-process node (tests, devnet) does not leave a listening socket behind. Shielded:
        # this runs while the node is being cancelled; shutdown() waits at most one poll
        # interval of the server's loop (0.5 s).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(metrics.close)


async def run_gateway(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The signed-request gateway on ``settings.gateway``; publishes a ``Gateway``, or None
    when it is off. A port it cannot bind is a ``StartError``."""
    where = node.settings.gateway
    if where == "off":
        task_status.started(None)
        return
    from node.gateway.app import GatewayApp, serve_gateway
    from node.gateway.proxy import AgentProxy

    host, port = gateway_address(where)
    app = GatewayApp(node, proxy=AgentProxy(node.settings.agent_networks), billing=node.credits)
    async with trio.open_nursery() as nursery:
        try:
            url: str = await nursery.start(serve_gateway, app, host, port)
        except (OSError, BaseExceptionGroup) as exc:
            # The server binds inside its own nursery: the OSError may arrive wrapped.
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]
            if not isinstance(leaf, OSError):
                raise
            raise StartError(
                f"cannot serve the gateway on {where}: {leaf.strerror or leaf}; pass --gateway "
                "HOST:PORT (port 0 picks a free one) or --gateway off"
            ) from None
        task_status.started(Gateway(url, app))


async def run_control(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The control socket in the data dir (``formation-node status``); publishes its path."""

    def arrivals() -> dict[str, object]:
        return {"arrivals": list(node.gossip.arrivals)}

    handlers = {"status": node.status, "arrivals": arrivals}
    await serve_control(node.settings.data_dir, handlers, task_status=task_status)


@dataclass(frozen=True)
class _NodeView:
    """What every service's view of the node shares: its address, network and state reads."""

    node: Node

    @property
    def address(self) -> str:
        return self.node.key.address

    @property
    def network(self) -> str:
        return self.node.settings.network

    def read(self, fn: Any) -> Any:
        with self.node.replica.lock:  # worker threads apply ops meanwhile
            return fn(self.node.replica.state)


@dataclass(frozen=True)
class _CreditsHost(_NodeView):
    """The node as the credits service sees it (``node.credits.service.CreditsHost``)."""

    def sign(self, kind: str, payload: dict[str, Any]) -> Op:
        return self.node.replica.sign(self.node.key, kind, payload, int(time.time() * 1000))

    async def store(self, ops: list[Op]) -> None:
        """The node's own chain ops, in one group commit with whatever else is waiting."""
        from node.ledger.admission import own

        result = await self.node.gossip.submit_checked([own(op) for op in ops])
        if len(result.accepted) != len(ops):
            raise RuntimeError(
                f"{len(ops) - len(result.accepted)} of {len(ops)} chain ops were not taken: "
                f"deferred {result.deferred}, duplicates {len(result.duplicates)}"
            )

    async def ingest(self, ops: list[tuple[bytes, bytes]]) -> None:
        """A granter's chain ops: verified here like any peer's, then stored and spread."""
        from node.ledger.op import OpRejected, decode_op
        from node.ledger.state import State

        checked = []
        for body, sig in ops:
            try:
                op = decode_op(body, sig, self.network)
                checked.append((op, State.check_op(op)))
            except OpRejected as exc:
                logger.info("credits: a granter's op was refused: %s", exc)
        fresh = [(op, p) for op, p in checked if not self.node.replica.has(op.id)]
        if fresh:
            await self.node.gossip.submit_checked(fresh)

    async def get_wire(self, op_ids: list[bytes]) -> list[tuple[bytes, bytes]]:
        return await trio.to_thread.run_sync(self.node.replica.get_wire, op_ids)

    async def ask(self, peer: str, account: str, amount: int, have: int) -> Any:
        from node.p2p import rights
        from node.p2p.transport import TransportError

        try:
            return await rights.ask(self.node.transport, peer, account, amount, have)
        except (TransportError, ValueError) as exc:
            logger.info("credits: asking %s for rights failed: %s", peer, exc)
            return None


# A host's capacity report after a change (a slot taken or released) waits at most this long,
# and comes at most this often: placers see new room within a gossip round, not a heartbeat.
CAPACITY_REPORT_GAP_S: Final = 0.2


async def report_capacity(node: Node) -> None:
    """Sign one node.capacity op: the machine's numbers, and what VMs may use and have free."""
    capacity: dict[str, Any] = await trio.to_thread.run_sync(
        measure_capacity, node.settings.data_dir
    )
    if node.vms is not None:
        capacity.update(node.vms.capacity())
    await node.gossip.write(node.key, "node.capacity", {"capacity": capacity})


async def run_heartbeat(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Report this machine's capacity as a signed node.capacity op every ``heartbeat_s``, and
    soon after the VM supervisor's book changes (``Node.capacity_changed``), heartbeat or not."""
    task_status.started()
    period_s = node.settings.heartbeat_s
    while True:
        with trio.move_on_after(period_s if period_s > 0 else math.inf):
            await node._capacity_now.wait()
            await trio.sleep(CAPACITY_REPORT_GAP_S)
        node._capacity_now = trio.Event()
        await report_capacity(node)


async def announce(node: Node) -> None:
    """The node's own record: who it is, where to reach it and what it does, replicated to all."""
    from node.pack.service import builder_tools_missing

    payload: dict[str, Any] = {
        "listen_addrs": node.transport.listen_addrs[:16],
        "version": __version__,
    }
    roles = []
    if not builder_tools_missing():
        roles.append("builder")
    if node.vmm_name is not None:
        roles.append("vm-host")
    if roles:
        payload["roles"] = roles
    await node.gossip.write(node.key, "node.announce", payload)


@dataclass(frozen=True)
class _BuildHost(_NodeView):
    """The node as the build service sees it (``node.pack.service.BuildHost``)."""

    async def write(self, kind: str, payload: dict[str, Any]) -> None:
        await self.node.gossip.write(self.node.key, kind, payload)

    async def fetch_blob(self, digest: str) -> None:
        await self.node.fetch_blob(digest)


async def run_builds(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Build the builds that are this node's turn (``node.pack.service``); publishes the
    service, or None when this machine lacks the builder's tools (it then never announced
    the ``builder`` role, so no build waits for it)."""
    from node.pack.service import builder_tools_missing, open_build_service

    if builder_tools_missing():
        task_status.started(None)
        return
    service = open_build_service(_BuildHost(node), node.blobs, node.settings.data_dir)
    await service.run(task_status=task_status)


def choose_vmm(settings: NodeSettings) -> tuple[str | None, str]:
    """The VM driver this node runs, and why (for the banner and ``status``)."""
    from node.vmm.qemu import qemu_tools_missing

    if settings.vmm == "off":
        return None, "off (--vmm off)"
    if settings.vmm == "simulated":
        return "simulated", "simulated VMs (--vmm simulated): nothing boots"
    missing = qemu_tools_missing()
    if not missing:
        return "qemu", "QEMU"
    if settings.vmm == "qemu":
        raise StartError(
            f"--vmm qemu: missing {', '.join(missing)}; run scripts/ensure-system-deps.sh run"
        )
    return None, f"off: missing {', '.join(missing)} (scripts/ensure-system-deps.sh run)"


@dataclass(frozen=True)
class _NodeHost(_NodeView):
    """The node as placement and the VM supervisor see it (``node.placement.service.NodeHost``)."""

    async def write(self, kind: str, payload: dict[str, Any]) -> None:
        await self.node.gossip.write(self.node.key, kind, payload)

    def alive(self) -> set[str]:
        return {*self.node.core.membership.alive(), self.address}

    def dead(self) -> set[str]:
        def gone(state: Any) -> set[str]:
            return {key for key, record in state.tables["nodes"].items() if not record.exists}

        return {*self.node.core.membership.dead(), *self.read(gone)} - {self.address}

    def now_ms(self) -> int:
        return int(time.time() * 1000)


async def run_placement(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Place the slots this node is placer of (``node.placement.service``); every node runs it,
    VMs or not: the node that takes a create places it."""
    from node.placement.service import PlacementService

    service = PlacementService(_NodeHost(node), random.Random(node.rng.getrandbits(64)))
    await service.run(task_status=task_status)


async def run_vms(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Answer placement asks and run this node's VMs (``node.vmm.supervisor``) with the driver
    ``choose_vmm`` picked; publishes the supervisor, or None when this node runs no VMs."""
    from node.vmm.supervisor import VmSupervisor

    settings = node.settings
    if node.vmm_name is None:
        task_status.started(None)
        return
    if settings.vm_capacity:
        total = parse_vm_capacity(settings.vm_capacity)
    else:
        total = await trio.to_thread.run_sync(measured_vm_capacity, settings.data_dir)
    driver: VmDriver
    async with contextlib.AsyncExitStack() as stack:
        if node.vmm_name == "qemu":
            from node.vmm.qemu import open_qemu_driver

            driver = await stack.enter_async_context(
                open_qemu_driver(settings.data_dir, netns=settings.vm_netns)
            )
        else:
            from node.vmm.simulated import open_simulated_driver

            driver = await stack.enter_async_context(open_simulated_driver(settings.data_dir))
        supervisor = VmSupervisor(
            _NodeHost(node),
            driver,
            total,
            fetch_blob=node.fetch_blob,
            capacity_changed=node.capacity_changed,
        )
        node.vms = supervisor
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            # The first report of what VMs may use, so placers can count this node at once.
            await report_capacity(node)
            task_status.started(supervisor)


async def run_mesh(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Keep this node's and its slots' mesh addresses claimed (``node.mesh.service``) and,
    unless the mesh is off, run the data path that follows them (``node.mesh.link``);
    publishes the claim service."""
    from node.mesh.service import MeshService

    on, node.mesh_note = choose_mesh(node.settings)
    async with trio.open_nursery() as nursery:
        service = await nursery.start(MeshService(_NodeHost(node)).run)
        if on:
            await nursery.start(run_mesh_link, node)
        task_status.started(service)


def choose_mesh(settings: NodeSettings) -> tuple[bool, str]:
    """Whether this node runs its mesh interface, and why not (for the banner and status)."""
    from node.mesh.link import endpoint_host_of
    from node.mesh.wireguard import wireguard_tools_missing

    if settings.mesh == "off":
        return False, "off (--mesh off)"
    missing = wireguard_tools_missing()
    if missing:
        if settings.mesh == "on":
            raise StartError(
                f"--mesh on: missing {', '.join(missing)}; run scripts/ensure-system-deps.sh run"
            )
        return False, f"off: missing {', '.join(missing)} (scripts/ensure-system-deps.sh run)"
    if endpoint_host_of(settings.listen_addrs, settings.mesh_endpoint) is None:
        why = "no listen address names an IP peers can send WireGuard packets to"
        if settings.mesh == "on":
            raise StartError(f"--mesh on: {why}; pass --mesh-endpoint IP")
        return False, f"off: {why} (pass --mesh-endpoint IP)"
    return True, "starting"


async def run_mesh_link(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """This node's WireGuard interface, in the VMs' netns when it runs QEMU VMs (so it routes
    for them), else in a netns of its own; publishes the ``MeshLink``."""
    from node.mesh.link import MeshLink, endpoint_host_of, nat_tools_missing
    from node.vmm.netns import open_netns

    settings, vms = node.settings, node.vms
    # The QEMU driver's property (None without a netns); the simulated driver has none.
    vm_netns: str | None = getattr(vms.driver, "netns_name", None) if vms is not None else None
    guest_ip_of = None
    if vm_netns is not None and vms is not None:
        missing = nat_tools_missing()
        if missing:
            logger.warning("mesh: instances get no mesh route: missing %s", ", ".join(missing))
        else:

            def guest_ip_of(instance_id: str, slot: int) -> str | None:
                info = vms.vm_of(instance_id, slot)
                return info.guest_ip if info is not None else None

    endpoint_host = endpoint_host_of(settings.listen_addrs, settings.mesh_endpoint)
    assert endpoint_host is not None  # choose_mesh said so
    async with contextlib.AsyncExitStack() as stack:
        if vm_netns is not None:
            netns = vm_netns
        else:
            netns = await stack.enter_async_context(open_netns(settings.data_dir / "mesh" / ".net"))
        link = MeshLink(
            _NodeHost(node),
            settings.data_dir,
            netns,
            endpoint_host,
            listen_port=settings.mesh_port,
            guest_ip_of=guest_ip_of,
            gone=lambda node_id: node.core.membership.state_of(node_id) in _GONE,
        )
        async with trio.open_nursery() as nursery:
            node.mesh_link = await nursery.start(link.run)
            task_status.started(link)


async def run_dns(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Answer the .fog zone from the replicated state (``node.names``) on ``settings.dns``.

    An explicit ``--dns`` that cannot be bound is a ``StartError``; the default port, when
    another process holds it, leaves this node without DNS and says so in its banner."""
    from node.ledger.mesh import mesh_view
    from node.names.records import Zone
    from node.names.server import serve_dns

    where = node.settings.dns
    if where == "off":
        node.dns_note = "off (--no-dns)"
        task_status.started()
        return
    host, port = gateway_address(where or DNS_DEFAULT, "--dns")

    def zone() -> Zone:
        with node.replica.lock:  # worker threads apply ops meanwhile
            state = node.replica.state
            return Zone.from_state(state, mesh_view(state).address_of)

    async with trio.open_nursery() as nursery:
        try:
            node.dns_url = await nursery.start(serve_dns, zone, host, port)
        except OSError as exc:
            if where is not None:
                raise StartError(
                    f"cannot serve DNS on {where}: {exc.strerror or exc}; pass --dns HOST:PORT "
                    "(port 0 picks a free one) or --no-dns"
                ) from None
            node.dns_note = (
                f"off: {DNS_DEFAULT} is in use ({exc.strerror or exc}); pass --dns HOST:PORT"
            )
            logger.warning("DNS %s", node.dns_note)
            task_status.started()
            return
        node.dns_note = f"the .fog zone on {node.dns_url}"
        task_status.started()
