"""node.vmm.simulated: the VmDriver contract without QEMU (real 127.0.0.1 listeners)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from node.pack.builder import BOOT_MARKER
from node.vmm.driver import VM_STATUSES, VmDriver, VmError, VmSpec
from node.vmm.simulated import open_simulated_driver


def spec(key: str = "abc-0", expose: tuple[int, ...] = (8000,), **kw: int) -> VmSpec:
    return VmSpec(
        key=key,
        image=Path("/nonexistent/image.qcow2"),
        kernel=Path("/nonexistent/vmlinuz"),
        initrd=Path("/nonexistent/initrd.img"),
        vcpus=kw.get("vcpus", 1),
        memory_mb=kw.get("memory_mb", 512),
        disk_gb=kw.get("disk_gb", 2),
        expose=expose,
    )


async def get(port: int) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}/index.html", timeout=5)


async def test_lifecycle_statuses_files_and_endpoints(tmp_path: Path) -> None:
    async with open_simulated_driver(tmp_path) as driver:
        d: VmDriver = driver  # the Protocol is what the supervisor holds
        created = await d.create(spec(expose=(8000, 9000)))
        assert created.status == "Created"
        assert created.accelerator == "simulated"
        assert [e["guest_port"] for e in created.endpoints] == [8000, 9000]
        assert all(e["host"] == "127.0.0.1" for e in created.endpoints)
        assert (tmp_path / "vms" / "abc-0" / "disk.qcow2").is_file()

        started = await d.start("abc-0")
        assert started.status == "Started"
        assert started.boot_ms is not None
        assert started.started_at_ms is not None
        assert started.endpoints == created.endpoints  # ports kept for the VM's life
        answer = await get(started.endpoints[0]["port"])
        assert answer.status_code == 200
        assert answer.text == "simulated abc-0"
        assert BOOT_MARKER in d.console_tail("abc-0")

        stopped = await d.stop("abc-0")
        assert stopped.status == "Stopped"
        with pytest.raises(httpx.HTTPError):
            await get(started.endpoints[0]["port"])  # a stopped guest closes connections

        again = await d.start("abc-0")
        assert again.status == "Started"
        rebooted = await d.reboot("abc-0")
        assert rebooted.status == "Started"
        assert d.console_tail("abc-0").count(BOOT_MARKER) == 3
        assert set(d.infos()) == {"abc-0"}
        assert all(i.status in VM_STATUSES for i in d.infos().values())

        await d.delete("abc-0")
        assert d.info("abc-0") is None
        assert not (tmp_path / "vms" / "abc-0").exists()
        with pytest.raises(OSError, match="all attempts to connect"):
            await trio.open_tcp_stream("127.0.0.1", started.endpoints[0]["port"])


async def test_kill_for_test_is_reported_by_next_change(tmp_path: Path) -> None:
    async with open_simulated_driver(tmp_path) as d:
        await d.create(spec())
        await d.start("abc-0")
        d.kill_for_test("abc-0")
        with trio.fail_after(5):
            change = await d.next_change()
        assert change.key == "abc-0"
        assert change.status == "Killed"
        assert "killed" in change.detail
        info = d.info("abc-0")
        assert info is not None
        assert info.status == "Killed"
        restarted = await d.start("abc-0")  # a Killed VM can be started again
        assert restarted.status == "Started"


async def test_bad_specs_and_unknown_keys_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async with open_simulated_driver(tmp_path) as d:
        with pytest.raises(VmError, match="VM key 'Bad_Key'"):
            await d.create(spec(key="Bad_Key"))
        with pytest.raises(VmError, match="vcpus is 0"):
            await d.create(spec(vcpus=0))
        with pytest.raises(VmError, match="memory_mb is 16"):
            await d.create(spec(memory_mb=16))
        with pytest.raises(VmError, match="EXPOSE port 70000"):
            await d.create(spec(expose=(70000,)))
        with pytest.raises(VmError, match="lists a port twice"):
            await d.create(spec(expose=(80, 80)))
        assert d.infos() == {}
        assert list((tmp_path / "vms").iterdir()) == []
        with pytest.raises(VmError, match="no VM 'nope'"):
            await d.start("nope")
        await d.create(spec())
        with pytest.raises(VmError, match="exists already"):
            await d.create(spec())
        with pytest.raises(VmError, match="not running: start it instead"):
            await d.reboot("abc-0")


async def test_vms_max_bounds_running_vms(tmp_path: Path) -> None:
    async with open_simulated_driver(tmp_path, vms_max=1) as d:
        await d.create(spec("a-0", expose=()))
        await d.create(spec("b-0", expose=()))
        await d.start("a-0")
        with pytest.raises(VmError, match="vms_max 1"):
            await d.start("b-0")
        info = d.info("b-0")
        assert info is not None
        assert info.status == "Created"
        await d.stop("a-0")
        assert (await d.start("b-0")).status == "Started"


async def test_metrics_count_what_the_endpoint_served(tmp_path: Path) -> None:
    async with open_simulated_driver(tmp_path) as d:
        info = await d.create(spec())
        await d.start("abc-0")
        before = d.metrics("abc-0")
        answer = await get(info.endpoints[0]["port"])
        after = d.metrics("abc-0")
        assert set(after) >= {
            "cpu_seconds_total",
            "memory_rss_bytes",
            "net_rx_bytes",
            "net_tx_bytes",
        }
        assert after["memory_rss_bytes"] == 512 * 1048576
        assert after["net_tx_bytes"] - before["net_tx_bytes"] >= len(answer.content)
        assert after["net_rx_bytes"] > before["net_rx_bytes"]


def test_info_to_json_is_plain_json() -> None:
    from node.vmm.driver import VmInfo

    info = VmInfo("k-1", "Started", pid=7, endpoints=({"guest_port": 1, "host": "h", "port": 2},))
    doc = info.to_json()
    assert doc["endpoints"] == [{"guest_port": 1, "host": "h", "port": 2}]
    assert doc["status"] == "Started"
    assert doc["pid"] == 7
