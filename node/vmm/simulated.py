"""A VM driver without QEMU: the same contract, for the simulator and fast tests.

Theory of operation
-------------------
``open_simulated_driver`` keeps the VMs' states in memory and walks them through the same
statuses, errors and files as ``node.vmm.qemu``: ``<data_dir>/vms/<key>/`` holds a
``console.log`` (a boot writes a few lines ending with the same ``BOOT_MARKER`` a real guest
prints) and a ``disk.qcow2`` placeholder holding the disk size, so ``delete`` has files to
remove and ``console_tail`` has something to show. A boot takes ``boot_s`` (Trio time, so an
autojump clock makes it instant).

Each EXPOSE port is a real listener on ``127.0.0.1:<free port>``, open from ``create`` to
``delete`` like the QEMU driver's forwards: while the VM is Started it answers any request
with ``HTTP/1.1 200`` and the body ``simulated <key>``; otherwise it closes the connection, as a
forward to a stopped guest does. Requests are read up to the end of their headers, bounded by
``REQUEST_BYTES_MAX`` and a timeout, and at most ``CONNECTIONS_MAX`` are served at once.

``kill_for_test(key)`` plays a QEMU that died: the VM becomes Killed and the change is queued
for ``next_change``, exactly as the QEMU driver reports an exit nobody asked for. ``vms_max``
bounds the VMs running at once with the same error as the QEMU driver.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from node.pack.builder import BOOT_MARKER
from node.vmm.driver import VmError, VmInfo, VmSpec

__all__ = [
    "CONNECTIONS_MAX",
    "REQUEST_BYTES_MAX",
    "SimulatedDriver",
    "open_simulated_driver",
]

REQUEST_BYTES_MAX: Final = 16384
CONNECTIONS_MAX: Final = 64
CHANGES_MAX: Final = 256
VMS_KNOWN_MAX: Final = 1024
_REQUEST_TIMEOUT_S: Final = 10.0


@dataclass(eq=False)
class _SimVm:
    spec: VmSpec
    dir: Path
    status: str = "Created"
    detail: str = ""
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    scopes: list[trio.CancelScope] = field(default_factory=list)  # one per listener
    boot_ms: int | None = None
    started_at_ms: int | None = None
    started_at_s: float | None = None
    cpu_s: float = 0.0
    connections: int = 0
    requests_total: int = 0
    rx_bytes: int = 0  # what the "guest" received and sent through its endpoints
    tx_bytes: int = 0

    def info(self) -> VmInfo:
        return VmInfo(
            key=self.spec.key,
            status=self.status,
            pid=None,
            accelerator="simulated",
            endpoints=tuple(dict(e) for e in self.endpoints),
            guest_ip=None,
            boot_ms=self.boot_ms,
            started_at_ms=self.started_at_ms,
            detail=self.detail,
        )


def _write_console(vm: _SimVm, lines: list[str]) -> None:
    with (vm.dir / "console.log").open("a") as f:
        f.write("".join(line + "\n" for line in lines))


class SimulatedDriver:
    """The ``VmDriver`` without QEMU; made by ``open_simulated_driver``."""

    name = "simulated"

    def __init__(
        self, data_dir: Path, nursery: trio.Nursery, *, boot_s: float, vms_max: int
    ) -> None:
        self.data_dir = data_dir
        self._nursery = nursery
        self._boot_s = boot_s
        self._vms_max = vms_max
        self._vms: dict[str, _SimVm] = {}
        self._changes: collections.deque[VmInfo] = collections.deque(maxlen=CHANGES_MAX)
        self._change_ready = trio.Event()

    def _vm(self, key: str) -> _SimVm:
        vm = self._vms.get(key)
        if vm is None:
            raise VmError(f"no VM {key!r} on this node")
        return vm

    def info(self, key: str) -> VmInfo | None:
        vm = self._vms.get(key)
        return None if vm is None else vm.info()

    def infos(self) -> dict[str, VmInfo]:
        return {k: vm.info() for k, vm in self._vms.items()}

    async def create(self, spec: VmSpec) -> VmInfo:
        spec.check()
        if spec.key in self._vms:
            raise VmError(f"VM {spec.key} exists already on this node")
        if len(self._vms) >= VMS_KNOWN_MAX:
            raise VmError(f"this node has {VMS_KNOWN_MAX} VMs already: delete some first")
        vm = _SimVm(spec, self.data_dir / "vms" / spec.key)
        await trio.Path(vm.dir).mkdir(parents=True, exist_ok=True)
        await trio.Path(vm.dir / "disk.qcow2").write_text(
            f"simulated disk of {spec.disk_gb} GB over {spec.image}\n"
        )
        for port in spec.expose:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            listener = listeners[0]
            for extra in listeners[1:]:
                await extra.aclose()
            host_port = int(listener.socket.getsockname()[1])
            vm.endpoints.append({"guest_port": port, "host": "127.0.0.1", "port": host_port})
            await self._nursery.start(self._serve, vm, listener)
        self._vms[spec.key] = vm
        return vm.info()

    async def _serve(
        self,
        vm: _SimVm,
        listener: trio.SocketListener,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        scope = trio.CancelScope()
        vm.scopes.append(scope)
        with scope:
            async with listener, trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    if vm.connections >= CONNECTIONS_MAX:
                        await stream.aclose()
                        continue
                    nursery.start_soon(self._answer, vm, stream)

    async def _answer(self, vm: _SimVm, stream: trio.SocketStream) -> None:
        vm.connections += 1
        try:
            async with stream:
                if vm.status != "Started":
                    return  # a stopped guest: the connection closes, as through a forward
                request = bytearray()
                with trio.move_on_after(_REQUEST_TIMEOUT_S):
                    while b"\r\n\r\n" not in request and len(request) < REQUEST_BYTES_MAX:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        request += chunk
                vm.requests_total += 1
                body = f"simulated {vm.spec.key}".encode()
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                vm.rx_bytes += len(request)
                vm.tx_bytes += len(head) + len(body)
                await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            vm.connections -= 1

    def _running(self) -> int:
        return sum(1 for vm in self._vms.values() if vm.status == "Started")

    async def _boot(self, vm: _SimVm, what: str) -> None:
        t0 = trio.current_time()
        await trio.to_thread.run_sync(
            _write_console, vm, [f"simulated {what} of {vm.spec.key}", "Linux version simulated"]
        )
        await trio.sleep(self._boot_s)
        await trio.to_thread.run_sync(_write_console, vm, [BOOT_MARKER])
        vm.status = "Started"
        vm.detail = ""
        vm.boot_ms = int((trio.current_time() - t0) * 1000)
        vm.started_at_ms = int(time.time() * 1000)
        vm.started_at_s = trio.current_time()

    async def start(self, key: str) -> VmInfo:
        vm = self._vm(key)
        if vm.status == "Started":
            return vm.info()
        if self._running() >= self._vms_max:
            raise VmError(
                f"VM {key}: {self._running()} VMs run already, the most this node runs at "
                f"once (vms_max {self._vms_max}); stop one first"
            )
        await self._boot(vm, "boot")
        return vm.info()

    def _settle_cpu(self, vm: _SimVm) -> None:
        if vm.started_at_s is not None:
            # A simulated idle guest: 5 % of one vCPU.
            vm.cpu_s += 0.05 * (trio.current_time() - vm.started_at_s)
            vm.started_at_s = trio.current_time()

    async def stop(self, key: str, timeout_s: float = 30.0) -> VmInfo:
        vm = self._vm(key)
        if vm.status == "Started":
            self._settle_cpu(vm)
            vm.started_at_s = None
            await trio.to_thread.run_sync(_write_console, vm, ["simulated ACPI power-down"])
            vm.status, vm.detail = "Stopped", "ACPI shutdown (simulated)"
        return vm.info()

    async def reboot(self, key: str) -> VmInfo:
        vm = self._vm(key)
        if vm.status != "Started":
            raise VmError(f"VM {key} is {vm.status}, not running: start it instead")
        self._settle_cpu(vm)
        await self._boot(vm, "reboot")
        return vm.info()

    async def delete(self, key: str) -> None:
        vm = self._vm(key)
        vm.status = "Stopped"
        for scope in vm.scopes:
            scope.cancel()
        del self._vms[key]
        await trio.to_thread.run_sync(shutil.rmtree, vm.dir, True)

    def kill_for_test(self, key: str) -> VmInfo:
        """Play a QEMU that died: Killed, queued for ``next_change``."""
        vm = self._vm(key)
        self._settle_cpu(vm)
        vm.started_at_s = None
        vm.status, vm.detail = "Killed", "simulated QEMU killed by signal 9"
        info = vm.info()
        self._changes.append(info)
        self._change_ready.set()
        return info

    async def next_change(self) -> VmInfo:
        while not self._changes:
            self._change_ready = trio.Event()
            await self._change_ready.wait()
        return self._changes.popleft()

    def metrics(self, key: str) -> dict[str, float]:
        vm = self._vm(key)
        if vm.status == "Started":
            self._settle_cpu(vm)
        running = vm.status == "Started"
        return {
            "cpu_seconds_total": vm.cpu_s,
            "memory_rss_bytes": float(vm.spec.memory_mb * 1048576 if running else 0),
            "disk_read_bytes": 0.0,
            "disk_write_bytes": 0.0,
            "net_rx_bytes": float(vm.rx_bytes),
            "net_tx_bytes": float(vm.tx_bytes),
        }

    def console_tail(self, key: str, bytes_max: int = 65536) -> str:
        vm = self._vm(key)
        with contextlib.suppress(OSError), (vm.dir / "console.log").open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - bytes_max))
            return f.read().decode(errors="replace")
        return ""


@asynccontextmanager
async def open_simulated_driver(
    data_dir: Path, *, boot_s: float = 0.05, vms_max: int = 64
) -> AsyncIterator[SimulatedDriver]:
    """A simulated driver over ``data_dir/vms``; its listeners close on exit."""
    await trio.Path(data_dir / "vms").mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        driver = SimulatedDriver(data_dir, nursery, boot_s=boot_s, vms_max=vms_max)
        try:
            yield driver
        finally:
            nursery.cancel_scope.cancel()
