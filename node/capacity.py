"""What this machine can offer, measured for the ``node.capacity`` heartbeat op.

Every ``--heartbeat-s`` the node signs a ``node.capacity`` op with these numbers; replicated,
they are the fog's view of where work can go (placement comes with a later issue) and the
node's heartbeat (``last_heartbeat`` in its record). Integers only, as ops require.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil

__all__ = ["measure_capacity"]


def measure_capacity(data_dir: Path) -> dict[str, int]:
    cores = os.cpu_count() or 1
    # Non-blocking: the share of CPU used since the previous call (the first call reports 0).
    busy_percent = psutil.cpu_percent(interval=None)
    memory = psutil.virtual_memory()
    disk = shutil.disk_usage(data_dir)
    return {
        "cpu_total_cores": cores,
        "cpu_available_millicores": max(0, int(cores * 1000 * (100.0 - busy_percent) / 100.0)),
        "memory_total_bytes": int(memory.total),
        "memory_available_bytes": int(memory.available),
        "storage_total_bytes": int(disk.total),
        "storage_available_bytes": int(disk.free),
    }
