"""The Prometheus copy of a node's numbers: VM series appear and go with their VMs."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from node.metrics import NodeMetrics

BASE: dict[str, Any] = {
    "ops": 3,
    "members_alive": 1,
    "peers": 1,
    "store_bytes": 4096,
    "local_health": 0,
    "packets_sent": 10,
    "ops_received": 5,
    "duplicates_received": 1,
    "dropped_packets": 0,
    "bad_packets": 0,
}
IID = "ab" * 20


def _text(metrics: NodeMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_vm_series_carry_instance_and_slot_and_leave_with_the_vm() -> None:
    metrics = NodeMetrics()
    vms = {"k": (IID, 0, {"cpu_seconds_total": 2.5, "memory_rss_bytes": 1024.0})}
    metrics.update(
        {
            **BASE,
            "vms": vms,
            "vm_free": {"vcpus": 1, "memory_mb": 512},
            "placement": {"asks": 3, "placed": 2},
        }
    )
    text = _text(metrics)
    assert f'formation_vm_cpu_seconds_total{{instance="{IID}",slot="0"}} 2.5' in text
    assert f'formation_vm_memory_rss_bytes{{instance="{IID}",slot="0"}} 1024.0' in text
    assert 'formation_vm_free{resource="memory_mb"} 512.0' in text
    assert 'formation_placement_events_total{event="asks"} 3.0' in text
    metrics.update({**BASE, "vms": {}, "placement": {"asks": 5, "placed": 2}})
    text = _text(metrics)
    assert IID not in text  # a deleted VM leaves no stale series
    assert 'formation_placement_events_total{event="asks"} 5.0' in text
