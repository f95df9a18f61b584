"""The QEMU VM driver: one QEMU process per running VM, driven over QMP from Trio.

Long on purpose: the life of a QEMU process (argv, boot wait, stop, reboot, exits, metrics) is
one state machine per VM, and splitting it would spread one lock's invariants over modules.

Theory of operation
-------------------
``open_qemu_driver`` is the only place in the project that spawns QEMU. It opens the VMs'
network (``node.vmm.netns``: a private netns, bridge, dnsmasq) unless ``netns=False``, and a
nursery that owns every QEMU process, watcher and port forward; on exit it kills the VMs
that still run and then removes the network, so nothing outlives the driver.

Files of a VM live in ``<data_dir>/vms/<key>/``: ``disk.qcow2`` (a qcow2 overlay whose
backing file is the pack build's read-only image, grown with ``qemu-img resize`` to the spec's
``disk_gb``: the image's fstab has ``x-systemd.growfs``), ``console.log`` (the guest's serial
console, appended across boots), ``qemu.log`` (QEMU's own messages) and ``qmp.sock``.

``start`` spawns ``ip netns exec <ns> qemu-system-x86_64 -machine q35 -accel tcg|kvm -smp
<vcpus> -m <memory_mb>`` with direct kernel boot (``root=LABEL=formroot rw console=ttyS0``),
the overlay on virtio-blk, a tap on virtio-net with the VM's reserved MAC, the serial console
into ``console.log`` and QMP on ``qmp.sock`` (q35, not microvm: microvm hung ~15 % of TCG boots
here). ``ip netns exec`` execs QEMU in place, so the process the driver watches *is* QEMU and
its pid is the VM's pid. The accelerator comes from ``node.vmm.accel`` (a cached probe boot;
TCG on PVM hosts). Resources are the spec's, enforced by QEMU itself: ``-smp`` vCPUs,
``-m`` memory, the disk's virtual size.

Boot complete is the guest's word: the image's ``formation-ready.service`` writes
``BOOT_MARKER`` on the console after the network and the entrypoint are up, and ``start``
returns Started when that line appears in ``console.log`` after the start's offset; if QEMU
exits first or ``boot_timeout_s`` passes, the VM is killed and is CriticalError, its detail
holding the last console lines.

A watcher task waits on each QEMU process. An exit nobody asked for (``stop``/``delete`` set
``expected``) is a change the VM made on its own and goes to ``next_change``: Killed (a
signal, or an error status), or Stopped when the guest powered itself off (status 0 after a
guest SHUTDOWN event). Noticed at once, since the watcher is woken by the process's exit.

``stop`` is a real ACPI shutdown: QMP ``system_powerdown``, wait up to ``timeout_s`` for QEMU
to exit (the guest's systemd powers off), then kill; never a pause. ``reboot`` is QMP
``system_reset`` and a new wait for the marker. ``vms_max`` bounds the VMs running at once
(two on these 2-core TCG machines). Metrics come from ``/proc/<pid>`` (CPU, RSS) and, polled
every ``METRICS_POLL_S`` while running, QMP ``query-blockstats`` and the tap's counters.

With ``netns=False`` there is no bridge: the VM gets QEMU's user-mode network and each EXPOSE
port is QEMU's own ``hostfwd`` on ``127.0.0.1:<port chosen at create>``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import trio

from node.pack.builder import BOOT_MARKER, IMAGE_LABEL
from node.vmm import accel as accel_mod
from node.vmm.driver import VmError, VmInfo, VmSpec
from node.vmm.forward import Forward, open_forward
from node.vmm.netns import Lease, VmNetwork, open_vm_network, socket_in_netns
from node.vmm.qmp import QmpClient, QmpError, open_qmp

__all__ = [
    "BOOT_TIMEOUT_S",
    "QemuDriver",
    "open_qemu_driver",
    "qemu_tools_missing",
]

log = logging.getLogger(__name__)

QEMU: Final = "qemu-system-x86_64"
# Boot options, each for time under TCG: no nested virtualization is offered, so udev loading
# kvm modules only costs (~5 s); the console carries warnings, failed units, the entrypoint's
# output and the boot marker, not every line of a healthy boot (serial output is slow);
# crypto self-tests and the timer checks are skipped; the emulated TSC is steady.
GUEST_CMDLINE: Final = (
    "module_blacklist=kvm,kvm_amd,kvm_intel quiet systemd.show_status=error "
    "cryptomgr.notests no_timer_check tsc=reliable"
)
BOOT_TIMEOUT_S: Final = 300.0  # systemd under TCG boots in ~15 s; margin for a loaded host
METRICS_POLL_S: Final = 5.0
CHANGES_MAX: Final = 256
VMS_KNOWN_MAX: Final = 1024
CONSOLE_TAIL_LINES: Final = 15
CONSOLE_BYTES_MAX: Final = 16 * 1048576
_SCAN_BYTES_MAX: Final = 1048576
_KILL_WAIT_S: Final = 10.0
_MARKER_POLL_S: Final = 0.1
_UNIX_PATH_MAX: Final = 100  # sun_path is 108 bytes; keep a margin
_TOOLS: Final = ((QEMU, "qemu-system-x86"), ("qemu-img", "qemu-utils"))
_NET_TOOLS: Final = (("dnsmasq", "dnsmasq-base"), ("ip", "iproute2"))


def qemu_tools_missing(*, netns: bool = True) -> list[str]:
    """The tools the driver needs that are not installed, as "tool (package)"."""
    tools = _TOOLS + (_NET_TOOLS if netns else ())
    missing = [f"{t} ({pkg})" for t, pkg in tools if shutil.which(t) is None]
    if netns and os.geteuid() != 0:
        missing.append("root (the VM netns, its bridge and taps need CAP_NET_ADMIN)")
    return missing


def _now_ms() -> int:
    return int(time.time() * 1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(eq=False)
class _Vm:
    spec: VmSpec
    dir: Path
    qmp_path: Path
    status: str = "Created"
    detail: str = ""
    accelerator: str | None = None
    lease: Lease | None = None
    forwards: list[Forward] = field(default_factory=list)
    hostfwd: dict[int, int] = field(default_factory=dict)  # netns=False: guest -> host port
    proc: trio.Process | None = None
    qmp: QmpClient | None = None
    exited: trio.Event = field(default_factory=trio.Event)
    expected: bool = False  # the running QEMU's exit was asked for (stop, delete, kill)
    guest_shutdown: bool = False
    last_rc: int | None = None  # the exit status of the last QEMU (negative: a signal)
    boot_ms: int | None = None
    started_at_ms: int | None = None
    boot_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    lock: trio.Lock = field(default_factory=trio.Lock)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    def endpoints(self) -> tuple[dict[str, Any], ...]:
        if self.forwards:
            return tuple(f.endpoint() for f in self.forwards)
        return tuple(
            {"guest_port": g, "host": "127.0.0.1", "port": p} for g, p in self.hostfwd.items()
        )

    def info(self) -> VmInfo:
        return VmInfo(
            key=self.spec.key,
            status=self.status,
            pid=self.proc.pid if self.proc is not None else None,
            accelerator=self.accelerator,
            endpoints=self.endpoints(),
            guest_ip=self.lease.ip if self.lease is not None else None,
            boot_ms=self.boot_ms,
            started_at_ms=self.started_at_ms,
            detail=self.detail,
        )


def _tail_lines(path: Path, lines: int, bytes_max: int = 16384) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - bytes_max))
            data = f.read()
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    return "\n".join([ln for ln in text.split("\n") if ln.strip()][-lines:])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _scan(path: Path, offset: int, marker: bytes) -> tuple[bool, int]:
    """Whether ``marker`` is in ``path`` from ``offset`` on, and the offset to scan from next
    (new bytes only, overlapping by the marker's length so a line split across reads counts)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(_SCAN_BYTES_MAX)
    except OSError:
        return False, offset
    if marker in data:
        return True, offset + len(data)
    return False, max(offset, offset + len(data) - len(marker) + 1)


def _rotate_console(path: Path) -> int:
    """Keep the console log bounded across boots: past ``CONSOLE_BYTES_MAX`` it becomes
    ``console.log.1`` (replacing the older one). The size to scan the next boot from."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    if size <= CONSOLE_BYTES_MAX:
        return size
    os.replace(path, path.with_name(path.name + ".1"))
    return 0


def _proc_metrics(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        out["cpu_seconds_total"] = (int(fields[11]) + int(fields[12])) / ticks
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["memory_rss_bytes"] = float(int(line.split()[1]) * 1024)
    return out


class QemuDriver:
    """The ``VmDriver`` over QEMU; made by ``open_qemu_driver``."""

    name = "qemu"

    def __init__(
        self,
        data_dir: Path,
        nursery: trio.Nursery,
        network: VmNetwork | None,
        *,
        accel: str,
        vms_max: int,
        boot_timeout_s: float,
    ) -> None:
        self.data_dir = data_dir
        self._nursery = nursery
        self._network = network
        self._accel = accel
        self._vms_max = vms_max
        self._boot_timeout_s = boot_timeout_s
        self._vms: dict[str, _Vm] = {}
        self._creating: set[str] = set()
        self._changes: collections.deque[VmInfo] = collections.deque(maxlen=CHANGES_MAX)
        self._change_ready = trio.Event()
        self._running = 0
        self.accel_reason = ""

    # -- queries --

    @property
    def netns_name(self) -> str | None:
        """The VMs' network namespace (None with ``netns=False``)."""
        return None if self._network is None else self._network.name

    def _vm(self, key: str) -> _Vm:
        vm = self._vms.get(key)
        if vm is None:
            raise VmError(f"no VM {key!r} on this node")
        return vm

    def info(self, key: str) -> VmInfo | None:
        vm = self._vms.get(key)
        return None if vm is None else vm.info()

    def infos(self) -> dict[str, VmInfo]:
        return {k: vm.info() for k, vm in self._vms.items()}

    def console_tail(self, key: str, bytes_max: int = 65536) -> str:
        vm = self._vm(key)
        try:
            with vm.console.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - bytes_max))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def metrics(self, key: str) -> dict[str, float]:
        vm = self._vm(key)
        out = dict(vm.stats)
        if vm.proc is not None and vm.proc.returncode is None:
            out.update(_proc_metrics(vm.proc.pid))
        return out

    async def next_change(self) -> VmInfo:
        while not self._changes:
            self._change_ready = trio.Event()
            await self._change_ready.wait()
        return self._changes.popleft()

    def _changed(self, vm: _Vm) -> None:
        self._changes.append(vm.info())
        self._change_ready.set()

    # -- create / delete --

    async def create(self, spec: VmSpec) -> VmInfo:
        spec.check()
        if spec.key in self._vms or spec.key in self._creating:
            raise VmError(f"VM {spec.key} exists already on this node")
        if len(self._vms) >= VMS_KNOWN_MAX:
            raise VmError(f"this node has {VMS_KNOWN_MAX} VMs already: delete some first")
        for what, path in (("image", spec.image), ("kernel", spec.kernel), ("initrd", spec.initrd)):
            if not await trio.Path(path).is_file():
                raise VmError(f"VM {spec.key}: the {what} {path} does not exist")
        vm_dir = self.data_dir / "vms" / spec.key
        qmp_path = vm_dir / "qmp.sock"
        if len(str(qmp_path)) > _UNIX_PATH_MAX:
            # A unix socket path must fit sun_path; a long data dir gets a short runtime dir.
            qmp_path = Path("/run/formation-vmm") / f"{os.getpid()}-{spec.key}.qmp"
        vm = _Vm(replace(spec, image=spec.image.resolve()), vm_dir, qmp_path)
        disk = vm_dir / "disk.qcow2"
        self._creating.add(spec.key)  # the awaits below: a second create of the key waits out
        try:
            await trio.Path(qmp_path.parent).mkdir(parents=True, exist_ok=True)
            await trio.Path(vm_dir).mkdir(parents=True, exist_ok=True)
            await self._qemu_img(
                "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(vm.spec.image), str(disk)
            )
            try:
                await self._qemu_img("resize", "-q", str(disk), f"{spec.disk_gb}G")
            except VmError as e:
                raise VmError(
                    f"VM {spec.key}: cannot make the disk {spec.disk_gb} GB (is the image "
                    f"larger?): {e}"
                ) from e
            if self._network is not None:
                vm.lease = self._network.add_tap(spec.key)
                for port in spec.expose:
                    vm.forwards.append(
                        await open_forward(self._nursery, port, self._dialer(vm, port))
                    )
            else:
                vm.hostfwd = {port: _free_port() for port in spec.expose}
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._release(vm)  # a failed create leaves nothing behind
                await trio.to_thread.run_sync(shutil.rmtree, vm_dir, True)
            raise
        finally:
            self._creating.discard(spec.key)
        self._vms[spec.key] = vm
        return vm.info()

    async def _qemu_img(self, *args: str) -> None:
        done = await trio.run_process(
            ["qemu-img", *args], capture_stdout=True, capture_stderr=True, check=False
        )
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise VmError(f"qemu-img {args[0]} failed: {err[-1] if err else done.returncode}")

    def _dialer(self, vm: _Vm, port: int) -> Any:
        network = self._network
        assert network is not None
        assert vm.lease is not None
        ip = vm.lease.ip

        async def dial() -> trio.SocketStream:
            if vm.status != "Started":
                raise OSError(f"VM {vm.spec.key} is {vm.status}")
            raw = await socket_in_netns(network.name)
            sock = trio.socket.from_stdlib_socket(raw)
            try:
                await sock.connect((ip, port))
            except BaseException:
                sock.close()
                raise
            return trio.SocketStream(sock)

        return dial

    async def _release(self, vm: _Vm) -> None:
        for fwd in vm.forwards:
            fwd.close()
        vm.forwards.clear()
        if self._network is not None:
            self._network.remove_tap(vm.spec.key)
        vm.lease = None

    def _interrupt_boot(self, vm: _Vm) -> None:
        if vm.proc is not None:
            vm.expected = True
            vm.boot_scope.cancel()

    async def delete(self, key: str) -> None:
        vm = self._vm(key)
        self._interrupt_boot(vm)
        async with vm.lock:
            if vm.proc is not None:
                await self._halt(vm, timeout_s=5.0)
            await self._release(vm)
            self._vms.pop(key, None)
            await trio.to_thread.run_sync(shutil.rmtree, vm.dir, True)
            with contextlib.suppress(OSError):
                await trio.Path(vm.qmp_path).unlink()

    # -- running --

    def _argv(self, vm: _Vm, accel: str) -> list[str]:
        s = vm.spec
        argv = [
            QEMU,
            "-name",
            f"formation-{s.key}",
            "-machine",
            "q35",
            "-accel",
            # TCG's translation cache defaults to 1 GiB (RSS 1.2 GB for a 512 MB guest); 256
            # MiB halves the RSS and booted no slower here.
            "tcg,tb-size=256" if accel == "tcg" else accel,
            "-smp",
            str(s.vcpus),
            "-m",
            str(s.memory_mb),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-kernel",
            str(s.kernel),
            "-initrd",
            str(s.initrd),
            "-append",
            f"root=LABEL={IMAGE_LABEL} rw console=ttyS0 {GUEST_CMDLINE}",
            "-drive",
            f"if=none,id=disk0,file={vm.dir / 'disk.qcow2'},format=qcow2,discard=unmap",
            "-device",
            "virtio-blk-pci,drive=disk0",
            # Entropy for the guest: without it, early-boot services can wait on the RNG.
            "-device",
            "virtio-rng-pci",
            "-chardev",
            f"file,id=console0,path={vm.console},append=on",
            "-serial",
            "chardev:console0",
            "-qmp",
            f"unix:{vm.qmp_path},server=on,wait=off",
        ]
        if vm.lease is not None:
            argv += [
                "-netdev",
                f"tap,id=net0,ifname={vm.lease.tap},script=no,downscript=no",
                "-device",
                f"virtio-net-pci,netdev=net0,mac={vm.lease.mac}",
            ]
        else:
            fwd = "".join(f",hostfwd=tcp:127.0.0.1:{p}-:{g}" for g, p in vm.hostfwd.items())
            argv += [
                "-netdev",
                f"user,id=net0{fwd}",
                "-device",
                "virtio-net-pci,netdev=net0",
            ]
        if self._network is not None:
            argv = ["ip", "netns", "exec", self._network.name, *argv]
        return argv

    async def _run_probe(self, argv: list[str], timeout_s: float) -> tuple[bytes, int | None]:
        """Run the accelerator probe's QEMU (spawned here: the only module that spawns QEMU)."""
        out = bytearray()
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        rc: int | None = None
        try:
            with trio.move_on_after(timeout_s):
                while len(out) < 1 << 20:
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        break
                    out += chunk
                    if b"Linux version" in out:
                        break
                await proc.wait()
                rc = proc.returncode
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
                await proc.stdout.aclose()
        return bytes(out), rc

    async def _choose_accel(self, vm: _Vm) -> str:
        chosen = await accel_mod.choose(self._accel, vm.spec.kernel, self._run_probe)
        self.accel_reason = chosen.reason
        return chosen.name

    async def start(self, key: str) -> VmInfo:
        vm = self._vm(key)
        async with vm.lock:
            if vm.proc is not None:  # running (or still shutting down): never a second QEMU
                return vm.info()
            if self._running >= self._vms_max:
                raise VmError(
                    f"VM {key}: {self._running} VMs run already, the most this node runs at "
                    f"once (vms_max {self._vms_max}); stop one first"
                )
            # Counted from here (the probe below awaits): two starts cannot both take the
            # last place. _run's exit gives it back.
            self._running += 1
            try:
                accel = await self._choose_accel(vm)
                vm.accelerator = accel
                offset = await trio.to_thread.run_sync(_rotate_console, vm.console)
                t0 = trio.current_time()
                vm.detail = ""
                await self._nursery.start(self._run, vm, self._argv(vm, accel))
            except BaseException:
                self._running -= 1
                raise
            vm.started_at_ms = _now_ms()
            await self._wait_booted(vm, offset, t0, "boot")
            return vm.info()

    async def _wait_booted(self, vm: _Vm, offset: int, t0: float, what: str) -> None:
        marker = BOOT_MARKER.encode()
        booted = False
        # stop/delete cancel this wait (they need the VM's lock, which a boot holds).
        vm.boot_scope = trio.CancelScope(deadline=trio.current_time() + self._boot_timeout_s)
        with vm.boot_scope:
            while not vm.exited.is_set():
                found, offset = await trio.to_thread.run_sync(_scan, vm.console, offset, marker)
                if found:
                    booted = True
                    break
                with trio.move_on_after(_MARKER_POLL_S):
                    await vm.exited.wait()
        if booted:
            vm.status = "Started"
            vm.boot_ms = int((trio.current_time() - t0) * 1000)
            log.info(
                "VM %s: %s complete in %d ms (%s)", vm.spec.key, what, vm.boot_ms, vm.accelerator
            )
            return
        if vm.boot_scope.cancel_called and not vm.exited.is_set() and vm.expected:
            vm.detail = f"{what} interrupted: a stop or delete was asked for"
            return
        if vm.exited.is_set():
            why = (
                f"QEMU exited during {what}: {_tail_lines(vm.dir / 'qemu.log', 3) or 'no message'}"
            )
        else:
            why = f"no boot-complete line on the console within {self._boot_timeout_s:g} s"
        await self._halt(vm, timeout_s=0)
        vm.status = "CriticalError"
        vm.detail = f"{why}; last console lines:\n{_tail_lines(vm.console, CONSOLE_TAIL_LINES)}"
        log.warning("VM %s: %s", vm.spec.key, why)

    async def _run(
        self, vm: _Vm, argv: list[str], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own one QEMU process: spawn it, keep a QMP session, notice its exit."""
        vm.exited = trio.Event()
        vm.expected = False
        vm.guest_shutdown = False
        vm.last_rc = None
        with contextlib.suppress(OSError):
            vm.qmp_path.unlink()
        with (vm.dir / "qemu.log").open("ab") as log_file:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        vm.proc = proc
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._qmp_session, vm)
                await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    vm.expected = True  # the driver is closing
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            self._running -= 1
            vm.proc = None
            vm.qmp = None
            self._exited(vm, proc.pid, proc.returncode if proc.returncode is not None else -9)
            vm.exited.set()

    def _exited(self, vm: _Vm, pid: int, rc: int) -> None:
        vm.last_rc = rc
        if vm.expected or vm.status not in ("Started",):
            return
        if rc == 0:
            # QEMU exits 0 only when the guest powered off (or on QMP quit, which the driver
            # never sends): the SHUTDOWN event may not have been read yet, so status 0 decides.
            vm.status, vm.detail = "Stopped", "the guest powered itself off"
        else:
            how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            vm.status = "Killed"
            vm.detail = f"QEMU (pid {pid}) {how}"
        log.warning("VM %s: %s", vm.spec.key, vm.detail)
        self._changed(vm)

    async def _qmp_session(self, vm: _Vm) -> None:
        try:
            async with open_qmp(vm.qmp_path, connect_timeout_s=30.0) as qmp:
                vm.qmp = qmp
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._events, vm, qmp)
                    while True:
                        await self._poll_stats(vm, qmp)
                        await trio.sleep(METRICS_POLL_S)
        except QmpError as e:
            log.debug("VM %s: QMP session ended: %s", vm.spec.key, e)
        finally:
            vm.qmp = None

    async def _events(self, vm: _Vm, qmp: QmpClient) -> None:
        with contextlib.suppress(QmpError):
            while True:
                event = await qmp.next_event()
                if event.get("event") == "SHUTDOWN":
                    data = event.get("data") or {}
                    vm.guest_shutdown = bool(data.get("guest", False))

    async def _poll_stats(self, vm: _Vm, qmp: QmpClient) -> None:
        try:
            blocks = await qmp.execute("query-blockstats", timeout_s=5.0)
        except (QmpError, trio.TooSlowError):
            blocks = []
        rd = wr = 0
        for b in blocks or []:
            st = b.get("stats") or {}
            rd += int(st.get("rd_bytes", 0))
            wr += int(st.get("wr_bytes", 0))
        vm.stats["disk_read_bytes"] = float(rd)
        vm.stats["disk_write_bytes"] = float(wr)
        if self._network is not None:
            counters = self._network.counters(vm.spec.key)
            if counters is not None:
                vm.stats["net_rx_bytes"] = float(counters[0])
                vm.stats["net_tx_bytes"] = float(counters[1])

    async def _halt(self, vm: _Vm, *, timeout_s: float) -> None:
        """Make the running QEMU exit: ACPI power-down for ``timeout_s``, then kill."""
        proc = vm.proc
        if proc is None:
            return
        vm.expected = True
        qmp = vm.qmp
        if timeout_s > 0 and qmp is not None:
            with contextlib.suppress(QmpError, trio.TooSlowError):
                await qmp.execute("system_powerdown", timeout_s=min(5.0, timeout_s))
            with trio.move_on_after(timeout_s):
                await vm.exited.wait()
        if not vm.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with trio.move_on_after(_KILL_WAIT_S):
                await vm.exited.wait()
            if not vm.exited.is_set():
                raise VmError(f"VM {vm.spec.key}: QEMU (pid {proc.pid}) did not die after SIGKILL")

    async def stop(self, key: str, timeout_s: float = 30.0) -> VmInfo:
        vm = self._vm(key)
        if vm.status != "Started":
            self._interrupt_boot(vm)  # a boot in progress: stop it instead of waiting for it
        async with vm.lock:
            if vm.proc is None:
                if vm.status == "Started":
                    vm.status = "Stopped"
                return vm.info()
            t0 = trio.current_time()
            await self._halt(vm, timeout_s=timeout_s)
            clean = vm.guest_shutdown or vm.last_rc == 0
            vm.status = "Stopped"
            vm.detail = (
                f"ACPI shutdown in {trio.current_time() - t0:.1f} s"
                if clean
                else f"killed: no ACPI shutdown within {timeout_s:g} s"
            )
            return vm.info()

    async def reboot(self, key: str) -> VmInfo:
        vm = self._vm(key)
        async with vm.lock:
            qmp = vm.qmp
            if vm.proc is None or vm.status != "Started" or qmp is None:
                raise VmError(f"VM {key} is {vm.status}, not running: start it instead")
            offset = await trio.to_thread.run_sync(_size, vm.console)
            t0 = trio.current_time()
            vm.started_at_ms = _now_ms()
            try:
                await qmp.execute("system_reset")
            except (QmpError, trio.TooSlowError) as e:
                raise VmError(f"VM {key}: reset failed: {e}") from e
            await self._wait_booted(vm, offset, t0, "reboot")
            return vm.info()

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            for vm in list(self._vms.values()):
                with contextlib.suppress(VmError):
                    await self._halt(vm, timeout_s=0)
                await self._release(vm)


@asynccontextmanager
async def open_qemu_driver(
    data_dir: Path,
    *,
    netns: bool = True,
    accel: str = "auto",
    vms_max: int = 2,
    boot_timeout_s: float = BOOT_TIMEOUT_S,
) -> AsyncIterator[QemuDriver]:
    """The QEMU driver over ``data_dir/vms``; its VMs are killed and its network removed on exit."""
    missing = qemu_tools_missing(netns=netns)
    if missing:
        raise VmError(
            f"the QEMU VM driver needs {', '.join(missing)}: run scripts/ensure-system-deps.sh run"
        )
    if accel not in ("auto", "kvm", "tcg"):
        raise VmError(f"accel must be 'auto', 'kvm' or 'tcg', not {accel!r}")
    if vms_max < 1:
        raise VmError(f"vms_max must be at least 1, not {vms_max}")
    await trio.Path(data_dir / "vms").mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        network = None
        if netns:
            network = await stack.enter_async_context(open_vm_network(data_dir / "vms" / ".net"))
        async with trio.open_nursery() as nursery:
            driver = QemuDriver(
                data_dir,
                nursery,
                network,
                accel=accel,
                vms_max=vms_max,
                boot_timeout_s=boot_timeout_s,
            )
            try:
                yield driver
            finally:
                await driver._close()
                nursery.cancel_scope.cancel()
