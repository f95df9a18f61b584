"""What a VM driver is: the spec of a VM, what the driver reports about it, and its interface.

Theory of operation
-------------------
A *driver* runs the VMs of one node: ``node.vmm.qemu`` (QEMU over QMP, for real) and
``node.vmm.simulated`` (no QEMU, for the simulator and fast tests) implement the same
``VmDriver`` protocol, so the node's supervisor drives either without knowing which.

A VM is named by its ``key`` (``[a-z0-9-]{1,40}``, unique on the node) and moves through the
upstream status values::

    create -> Created --start--> Started --stop--> Stopped --start--> Started ...
                                    |  \\--reboot--> Started
                                    \\-- (QEMU died / was killed) --> Killed --start--> Started
    start that never sees the guest boot -> CriticalError (start may be tried again)

``start`` returns ``Started`` only once the guest itself said it booted (a console marker line
written by the image's ``formation-ready.service``), never after a guessed delay. Changes the VM
makes on its own (its QEMU died, was killed, or the guest powered itself off) are not answers
to a call: the driver queues them and ``next_change`` hands them out, in order, bounded.

This module holds only types and validation (no I/O): ``VmSpec.check`` refuses a bad spec with
a message naming the field to fix, before a driver touches a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

__all__ = [
    "DISK_GB_MAX",
    "KEY_PATTERN",
    "MEMORY_MB_MAX",
    "MEMORY_MB_MIN",
    "VCPUS_MAX",
    "VM_STATUSES",
    "VmDriver",
    "VmError",
    "VmInfo",
    "VmSpec",
]

VM_STATUSES: Final = ("Created", "Started", "Stopped", "Killed", "CriticalError")
KEY_PATTERN: Final = re.compile(r"[a-z0-9-]{1,40}")
# Sanity bounds on one VM (far above what a fog node offers; they catch unit mistakes such as
# bytes given as MB before QEMU refuses in its own words).
VCPUS_MAX: Final = 64
MEMORY_MB_MIN: Final = 128
MEMORY_MB_MAX: Final = 1024 * 1024
DISK_GB_MAX: Final = 16 * 1024
_PORTS_MAX: Final = 64


class VmError(Exception):
    """A driver call failed; ``str()`` is a one-line reason that says what to do."""


@dataclass(frozen=True, slots=True)
class VmSpec:
    """One VM: the pack build's read-only image, kernel and initrd, its resources and ports."""

    key: str
    image: Path
    kernel: Path
    initrd: Path
    vcpus: int
    memory_mb: int
    disk_gb: int
    expose: tuple[int, ...] = ()

    def check(self) -> None:
        """Raise ``VmError`` naming the first bad field; a valid spec returns None."""
        if not isinstance(self.key, str) or KEY_PATTERN.fullmatch(self.key) is None:
            raise VmError(f"VM key {self.key!r}: use 1-40 characters of a-z, 0-9 and '-'")
        for name, value, low, high in (
            ("vcpus", self.vcpus, 1, VCPUS_MAX),
            ("memory_mb", self.memory_mb, MEMORY_MB_MIN, MEMORY_MB_MAX),
            ("disk_gb", self.disk_gb, 1, DISK_GB_MAX),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise VmError(f"VM {self.key}: {name} is {value!r}; it must be {low}..{high}")
        if len(self.expose) > _PORTS_MAX:
            raise VmError(f"VM {self.key}: {len(self.expose)} EXPOSE ports; at most {_PORTS_MAX}")
        for port in self.expose:
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise VmError(f"VM {self.key}: EXPOSE port {port!r} is not 1..65535")
        if len(set(self.expose)) != len(self.expose):
            raise VmError(f"VM {self.key}: EXPOSE lists a port twice: {list(self.expose)}")


@dataclass(frozen=True, slots=True)
class VmInfo:
    """What the driver knows about one VM at one moment (a snapshot; JSON-able)."""

    key: str
    status: str
    pid: int | None = None
    accelerator: str | None = None  # "kvm" | "tcg" | "simulated"
    endpoints: tuple[dict[str, Any], ...] = field(default=())
    guest_ip: str | None = None
    boot_ms: int | None = None
    started_at_ms: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.status,
            "pid": self.pid,
            "accelerator": self.accelerator,
            "endpoints": [dict(e) for e in self.endpoints],
            "guest_ip": self.guest_ip,
            "boot_ms": self.boot_ms,
            "started_at_ms": self.started_at_ms,
            "detail": self.detail,
        }


class VmDriver(Protocol):
    """The node's VMs. Every call names the VM by key; unknown keys raise ``VmError``."""

    name: str  # "qemu" | "simulated"

    async def create(self, spec: VmSpec) -> VmInfo:
        """Its own disk (a qcow2 overlay over ``spec.image``, sized to ``disk_gb``) -> Created."""
        ...

    async def start(self, key: str) -> VmInfo:
        """Boot; Started once the guest says it booted, else CriticalError (with the reason)."""
        ...

    async def stop(self, key: str, timeout_s: float = 30.0) -> VmInfo:
        """ACPI power-down, and a kill after ``timeout_s`` -> Stopped."""
        ...

    async def reboot(self, key: str) -> VmInfo:
        """Reset the guest and wait for it to boot again -> Started."""
        ...

    async def delete(self, key: str) -> None:
        """Stop if needed, remove its files, free its forwards; the key is unknown afterwards."""
        ...

    def info(self, key: str) -> VmInfo | None: ...

    def infos(self) -> dict[str, VmInfo]: ...

    async def next_change(self) -> VmInfo:
        """The next change a VM made on its own (e.g. Killed when its QEMU died)."""
        ...

    def metrics(self, key: str) -> dict[str, float]:
        """cpu_seconds_total, memory_rss_bytes, disk_read_bytes, disk_write_bytes,
        net_rx_bytes, net_tx_bytes: those known now."""
        ...

    def console_tail(self, key: str, bytes_max: int = 65536) -> str:
        """The last ``bytes_max`` bytes of the guest console (decoded, invalid bytes replaced)."""
        ...
