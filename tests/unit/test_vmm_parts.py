"""node.vmm pieces without QEMU: accelerator choice, port forwards, the QEMU argv."""

from __future__ import annotations

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
