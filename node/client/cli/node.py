"""``form node``: the nodes of the fog (their free capacity and heartbeats) and the node whose
gateway answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from node.client.cli._common import Commands, _col, _fields, _json_out, _Session, _table, _text


def _span(seconds: int) -> str:
    """A duration in its largest whole unit: 12s, 5m, 3h, 2d."""
    for unit, unit_s in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= unit_s:
            return f"{seconds // unit_s}{unit}"
    return f"{seconds}s"


def _age(now_s: float, value: Any) -> str:
    """How long ago a unix-milliseconds time was: ``12s ago``; ``3s ahead`` past our clock."""
    if not isinstance(value, int) or isinstance(value, bool):
        return _text("", value)
    delta_s = now_s - value / 1000
    # A node whose clock runs ahead of ours stamps heartbeats "in the future": say so rather
    # than hide the skew behind "0s ago".
    return f"{_span(int(delta_s))} ago" if delta_s >= 0 else f"{_span(int(-delta_s))} ahead"


def _bytes_text(value: Any) -> str:
    """A byte count in binary units: 512 B, 1.5 KiB, 8.0 GiB."""
    if not isinstance(value, int) or isinstance(value, bool):
        return _text("", value)
    if value < 1024:
        return f"{value} B"
    size = value / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _millicores_text(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return _text("", value)
    return f"{value}m"


def _vm_text(value: Any) -> str:
    """``2 vCPU 1.5 GiB 15 GB`` from a ``vm_free`` report; ``-`` for a node that runs no VMs."""
    if not isinstance(value, Mapping):
        return "-"
    memory = _bytes_text(int(value.get("memory_mb", 0)) * 1024 * 1024)
    text = f"{value.get('vcpus', 0)} vCPU {memory} {value.get('disk_gb', 0)} GB"
    return text + (f" {value['gpus']} GPU" if value.get("gpus") else "")


def cmd_node_info(session: _Session) -> int:
    result = session.client(signed=False).node_info()
    if session.args.json:
        _json_out(result)
    else:
        _fields(result)
    return 0


def cmd_node_list(session: _Session) -> int:
    result = session.client(signed=False).node_list()
    if session.args.json:
        _json_out(result)
        return 0
    now_s = session.clock()
    _table(
        result.get("nodes") if isinstance(result, Mapping) else None,
        [
            _col("NODE ID", "node_id"),
            _col("VERSION", "version"),
            _col("LAST HEARTBEAT", "last_heartbeat", render=lambda ms: _age(now_s, ms)),
            _col("FREE CPU", "capacity", "cpu_available_millicores", render=_millicores_text),
            _col("FREE MEMORY", "capacity", "memory_available_bytes", render=_bytes_text),
            _col("FREE STORAGE", "capacity", "storage_available_bytes", render=_bytes_text),
            _col("FREE FOR VMS", "capacity", "vm_free", render=_vm_text),
        ],
    )
    return 0


def register(commands: Commands) -> None:
    node = commands.branch("node", "the nodes of the fog")
    node.leaf("list", cmd_node_list, "every node known, with its free capacity and heartbeat")
    node.leaf("info", cmd_node_info, "the node whose gateway answers")
