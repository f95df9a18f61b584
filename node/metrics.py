"""Prometheus metrics of a running node, on a local HTTP port (``--metrics HOST:PORT``).

The exporter is prometheus_client's own threaded HTTP server with a private registry; the
values are copied from the node's cores once a second by ``run_metrics`` (the cores are
single-threaded, so the exporter thread never reads them directly). Default bind is
127.0.0.1 with port 0 (a free one, reported by ``formation-node status``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

__all__ = ["NodeMetrics"]

_INTERVAL_S = 1.0
# The VM driver's numbers (``node.vmm.driver.VmDriver.metrics``) and what they mean.
VM_METRICS = {
    "cpu_seconds_total": "CPU time the VM's QEMU process used, in seconds",
    "memory_rss_bytes": "Resident memory of the VM's QEMU process",
    "disk_read_bytes": "Bytes the VM read from its disk",
    "disk_write_bytes": "Bytes the VM wrote to its disk",
    "net_rx_bytes": "Bytes the VM received",
    "net_tx_bytes": "Bytes the VM sent",
}


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ops = Gauge("formation_ops", "Ops held in the local replica", registry=r)
        self.members_alive = Gauge("formation_members_alive", "Members believed alive", registry=r)
        self.peers = Gauge("formation_peers", "Peers with a libp2p connection", registry=r)
        self.store_bytes = Gauge("formation_store_bytes", "SQLite store size", registry=r)
        self.local_health = Gauge(
            "formation_local_health", "Lifeguard local health (0 = healthy)", registry=r
        )
        self.packets_sent = Counter("formation_packets_sent", "Gossip packets sent", registry=r)
        self.ops_received = Counter(
            "formation_ops_received", "Op copies received by gossip", registry=r
        )
        self.duplicates = Counter(
            "formation_duplicate_ops_received", "Op copies already held", registry=r
        )
        self.dropped_packets = Counter(
            "formation_packets_dropped", "Packets dropped (queue full, unreachable)", registry=r
        )
        self.bad_packets = Counter(
            "formation_bad_packets", "Packets refused (malformed, spoofed)", registry=r
        )
        self.gateway_responses = Counter(
            "formation_gateway_responses",
            "Gateway responses by HTTP status",
            ["status"],
            registry=r,
        )
        self.agent_calls = Counter(
            "formation_agent_calls", "Agent calls proxied by the gateway", registry=r
        )
        # One gauge per VM number, labelled by instance and slot (node.vmm's driver metrics).
        self.vm = {
            name: Gauge(f"formation_vm_{name}", help_text, ["instance", "slot"], registry=r)
            for name, help_text in VM_METRICS.items()
        }
        self.vm_free = Gauge(
            "formation_vm_free", "What VMs may still use here", ["resource"], registry=r
        )
        self._vm_labels: set[tuple[str, str]] = set()
        self.placement = Counter(
            "formation_placement_events",
            "What this node's placement service did: asks sent, slots placed, failed, "
            "rescheduled, refusals seen, retries",
            ["event"],
            registry=r,
        )
        self._last: dict[str, float] = {}
        self.url = ""
        self._server: Any = None  # prometheus_client's WSGIServer, once serving
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> str:
        """Start the exporter's thread on ``host:port``; raises ``OSError`` if it cannot bind."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.url = f"http://{host}:{self._server.server_port}/metrics"
        return self.url

    def close(self) -> None:
        """Stop the exporter (blocks until its thread has ended); a no-op if never served."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def _count(self, counter: Counter, name: str, total: float) -> None:
        delta = total - self._last.get(name, 0.0)
        if delta > 0:
            counter.inc(delta)
        self._last[name] = total

    def update(self, snapshot: dict[str, Any]) -> None:
        self.ops.set(snapshot["ops"])
        self.members_alive.set(snapshot["members_alive"])
        self.peers.set(snapshot["peers"])
        self.store_bytes.set(snapshot["store_bytes"])
        self.local_health.set(snapshot["local_health"])
        self._count(self.packets_sent, "packets_sent", snapshot["packets_sent"])
        self._count(self.ops_received, "ops_received", snapshot["ops_received"])
        self._count(self.duplicates, "duplicates", snapshot["duplicates_received"])
        self._count(self.dropped_packets, "dropped_packets", snapshot["dropped_packets"])
        self._count(self.bad_packets, "bad_packets", snapshot["bad_packets"])
        for status, total in snapshot.get("gateway_responses", {}).items():
            self._count(
                self.gateway_responses.labels(status=str(status)), f"gateway_{status}", total
            )
        self._count(self.agent_calls, "agent_calls", snapshot.get("agent_calls", 0))
        self._update_vms(snapshot.get("vms", {}), snapshot.get("vm_free", {}))
        for event, total in snapshot.get("placement", {}).items():
            self._count(self.placement.labels(event=event), f"placement_{event}", total)

    def _update_vms(
        self, vms: dict[str, tuple[str, int, dict[str, float]]], free: dict[str, int]
    ) -> None:
        labels = set()
        for instance_id, slot, numbers in vms.values():
            label = (instance_id, str(slot))
            labels.add(label)
            for name, gauge in self.vm.items():
                if name in numbers:
                    gauge.labels(instance=label[0], slot=label[1]).set(numbers[name])
        for gone in self._vm_labels - labels:  # a deleted VM leaves no stale series
            for gauge in self.vm.values():
                with contextlib.suppress(KeyError):
                    gauge.remove(*gone)
        self._vm_labels = labels
        for resource, value in free.items():
            self.vm_free.labels(resource=resource).set(value)

    async def run(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        while True:
            self.update(snapshot())
            await trio.sleep(_INTERVAL_S)
