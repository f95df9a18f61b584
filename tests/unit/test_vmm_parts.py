"""node.vmm pieces without QEMU: accelerator choice, port forwards, the QEMU argv."""

from __future__ import annotations

import collections
import contextlib
from pathlib import Path

import pytest
import trio
import trio.testing

from node.vmm import accel
from node.vmm.forward import open_forward


async def test_choose_obeys_an_explicit_accelerator_without_probing() -> None:
    async def never(argv: list[str], timeout_s: float) -> tuple[bytes, int | None]:
        raise AssertionError("no probe for an explicit choice")

    assert (await accel.choose("tcg", Path("/k"), never)).name == "tcg"
    assert (await accel.choose("kvm", Path("/k"), never)).name == "kvm"
    with pytest.raises(ValueError, match="accel must be"):
        await accel.choose("xen", Path("/k"), never)


async def test_auto_probes_once_per_kernel_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_device_problem", lambda: None)
    monkeypatch.setattr(accel, "_cache", {})
    calls: list[list[str]] = []

    async def hangs(argv: list[str], timeout_s: float) -> tuple[bytes, int | None]:
        calls.append(argv)
        return b"SeaBIOS\nProbing EDD (edd=off to disable)... ok\n", None

    first = await accel.choose("auto", Path("/boot/vmlinuz-x"), hangs)
    second = await accel.choose("auto", Path("/boot/vmlinuz-x"), hangs)
    assert first == second
    assert first.name == "tcg"
    assert "no kernel output" in first.reason
    assert "Probing EDD" in first.reason
    assert len(calls) == 1
    assert calls[0][calls[0].index("-accel") + 1] == "kvm"
    assert calls[0][calls[0].index("-kernel") + 1] == "/boot/vmlinuz-x"


async def test_auto_without_a_device_is_tcg_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(accel, "_cache", {})
    problem = accel.kvm_device_problem(tmp_path / "kvm")
    assert problem is not None
    assert "does not exist" in problem
    monkeypatch.setattr(accel, "kvm_device_problem", lambda: problem)

    async def never(argv: list[str], timeout_s: float) -> tuple[bytes, int | None]:
        raise AssertionError("no probe without a device")

    chosen = await accel.choose("auto", Path("/k"), never)
    assert chosen == accel.Accel("tcg", problem)


def test_judge_probe() -> None:
    assert accel.judge_probe(b"...\n[ 0.0] Linux version 6.1\n", 0, 4).name == "kvm"
    crashed = accel.judge_probe(b"error: failed to set MSR 0x10a\n", 134, 4)
    assert crashed.name == "tcg"
    assert "exited with status 134" in crashed.reason
    assert "MSR 0x10a" in crashed.reason
    assert "no output" in accel.judge_probe(b"", None, 4).reason


async def _echo_upper(stream: trio.SocketStream) -> None:
    async with stream:
        data = b""
        while chunk := await stream.receive_some(4096):
            data += chunk
        await stream.send_all(data.upper())  # answers after the client's half-close


async def test_forward_copies_both_ways_and_passes_the_half_close() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _echo_upper, 0)
        port = listeners[0].socket.getsockname()[1]
        dials = 0

        async def dial() -> trio.abc.Stream:
            nonlocal dials
            dials += 1
            return await trio.open_tcp_stream("127.0.0.1", port)

        fwd = await open_forward(nursery, 8000, dial)
        assert fwd.endpoint() == {"guest_port": 8000, "host": "127.0.0.1", "port": fwd.port}
        for payload in (b"hello through the forward", b"x" * 300_000):
            client = await trio.open_tcp_stream("127.0.0.1", fwd.port)
            async with client:
                await client.send_all(payload)
                await client.send_eof()
                got = b""
                while chunk := await client.receive_some(65536):
                    got += chunk
            assert got == payload.upper()
        assert dials == 2
        assert fwd.connections_total == 2
        fwd.close()
        nursery.cancel_scope.cancel()


async def test_forward_refuses_over_connections_max_and_survives_failed_dials() -> None:
    async with trio.open_nursery() as nursery:
        release = trio.Event()
        dialed = trio.Event()
        fail = True

        async def dial() -> trio.abc.Stream:
            if fail:
                raise OSError("VM is Stopped")
            a, b = trio.testing.memory_stream_pair()
            nursery.start_soon(_hold, b, release)
            dialed.set()
            return a

        fwd = await open_forward(nursery, 80, dial, connections_max=1)
        client = await trio.open_tcp_stream("127.0.0.1", fwd.port)
        async with client:
            assert await client.receive_some(10) == b""  # the dial failed: closed
        fail = False
        held = await trio.open_tcp_stream("127.0.0.1", fwd.port)
        await dialed.wait()
        extra = await trio.open_tcp_stream("127.0.0.1", fwd.port)
        async with extra:
            with contextlib.suppress(trio.BrokenResourceError):  # a reset or a clean close
                assert await extra.receive_some(10) == b""
        assert fwd.refused_total == 1
        release.set()
        await held.aclose()
        nursery.cancel_scope.cancel()


async def _hold(stream: trio.abc.Stream, release: trio.Event) -> None:
    await release.wait()
    await stream.aclose()


async def test_qemu_argv_carries_the_specs_resources_and_never_microvm(tmp_path: Path) -> None:
    from node.vmm.driver import VmSpec
    from node.vmm.qemu import GUEST_CMDLINE, QemuDriver, _Vm

    spec = VmSpec(
        "k-0", tmp_path / "i.qcow2", tmp_path / "vmlinuz", tmp_path / "initrd", 3, 1536, 7, (80,)
    )
    async with trio.open_nursery() as nursery:
        driver = QemuDriver(tmp_path, nursery, None, accel="tcg", vms_max=2, boot_timeout_s=1)
        vm = _Vm(spec, tmp_path / "vms" / "k-0", tmp_path / "vms" / "k-0" / "qmp.sock")
        vm.hostfwd = {80: 40080}
        argv = driver._argv(vm, "tcg")

    def after(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert argv[0] == "qemu-system-x86_64"  # no netns: not wrapped in `ip netns exec`
    assert after("-machine") == "q35"
    assert after("-accel").startswith("tcg")
    assert after("-smp") == "3"
    assert after("-m") == "1536"
    assert after("-kernel") == str(tmp_path / "vmlinuz")
    assert after("-initrd") == str(tmp_path / "initrd")
    assert after("-append") == f"root=LABEL=formroot rw console=ttyS0 {GUEST_CMDLINE}"
    assert "hostfwd=tcp:127.0.0.1:40080-:80" in after("-netdev")
    assert f"path={tmp_path / 'vms' / 'k-0' / 'console.log'},append=on" in after("-chardev")
    assert after("-qmp").startswith(f"unix:{tmp_path / 'vms' / 'k-0' / 'qmp.sock'},server=on")
    assert "-no-reboot" not in argv  # a guest reboot resets, as reboot() does
    assert "microvm" not in " ".join(argv)


def test_console_scan_finds_a_marker_split_across_reads_and_rotation_bounds_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.vmm import qemu

    console = tmp_path / "console.log"
    console.write_bytes(b"old boot: formation: boot complete\n")
    start = console.stat().st_size
    with console.open("ab") as f:
        f.write(b"[ 1.0] Linux version\nformation: boot")
    found, pos = qemu._scan(console, start, b"formation: boot complete")
    assert not found  # the old boot's marker is before the offset
    with console.open("ab") as f:
        f.write(b" complete\n")
    found, _ = qemu._scan(console, pos, b"formation: boot complete")
    assert found

    monkeypatch.setattr(qemu, "CONSOLE_BYTES_MAX", 10)
    assert qemu._rotate_console(console) == 0
    assert not console.exists()
    assert (tmp_path / "console.log.1").read_bytes().endswith(b"boot complete\n")
    console.write_bytes(b"short")
    assert qemu._rotate_console(console) == 5


def test_the_image_finalize_installs_the_boot_marker_and_power_key_units() -> None:
    from node.pack.builder import BOOT_MARKER, _powerkey_unit, _ready_unit, _script_finalize

    ready = _ready_unit()
    description = next(line for line in ready.splitlines() if line.startswith("Description="))
    # systemd prints Descriptions on the console too: the marker must come only from ExecStart.
    assert BOOT_MARKER not in description
    assert ready.count(BOOT_MARKER) == 1
    assert "After=network-online.target formation-entrypoint.service" in ready
    assert "Type=oneshot" in ready
    assert "ExecStart=/usr/local/sbin/formation-powerkey" in _powerkey_unit()
    script = _script_finalize({"hostname": "web"})
    for unit in ("formation-ready", "formation-powerkey"):
        assert f"/etc/systemd/system/multi-user.target.wants/{unit}.service" in script


async def test_an_exit_nobody_asked_for_is_a_change_and_an_asked_one_is_not(
    tmp_path: Path,
) -> None:
    from node.vmm.driver import VmSpec
    from node.vmm.qemu import QemuDriver, _Vm

    def vm(key: str) -> _Vm:
        spec = VmSpec(key, tmp_path / "i", tmp_path / "k", tmp_path / "r", 1, 256, 1)
        made = _Vm(spec, tmp_path / key, tmp_path / key / "qmp.sock", status="Started")
        driver._vms[key] = made
        return made

    async with trio.open_nursery() as nursery:
        driver = QemuDriver(tmp_path, nursery, None, accel="tcg", vms_max=2, boot_timeout_s=1)
        killed, off, stopped = vm("killed-0"), vm("off-0"), vm("stopped-0")
        driver._exited(killed, 4242, -9)
        driver._exited(off, 4243, 0)
        stopped.expected = True  # stop() asked for this exit
        driver._exited(stopped, 4244, 0)
        with trio.fail_after(1):
            first = await driver.next_change()
            second = await driver.next_change()
    assert (first.key, first.status) == ("killed-0", "Killed")
    assert first.detail == "QEMU (pid 4242) killed by signal 9"
    assert (second.key, second.status) == ("off-0", "Stopped")
    assert "powered itself off" in second.detail
    assert stopped.status == "Started"  # left to stop() to set
    assert driver._changes == collections.deque()
