"""node.vmm.qemu for real: the pack build's small image boots under QEMU and answers HTTP.

The image is issue 11's small Formfile (python3 http.server on 8000), built with the real
builder over the shared cache (``default_cache_dir()``: base and layers are reused, so this
build takes seconds). One VM, booted twice (start, then start after an ACPI stop): its HTTP
server answers through the forwarded ``127.0.0.1`` endpoint, the console log has the boot
marker, ``kill -9`` of its QEMU is reported as Killed by ``next_change``, delete removes its
files. Afterwards the run's netns is gone and the host's own namespace has no new link.

Needs root, qemu-system-x86_64, qemu-img, dnsmasq, ip and the builder's tools
(``scripts/ensure-system-deps.sh run test``): a missing one fails the test, it is not skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from node.pack.base import default_cache_dir
from node.pack.builder import BOOT_MARKER, BuildResult, build
from node.pack.formfile import parse
from node.pack.password import hash_passwords
from node.pack.service import builder_tools_missing
from node.vmm.driver import VmDriver, VmError, VmSpec
from node.vmm.qemu import open_qemu_driver, qemu_tools_missing
from tests.real.test_pack_e2e import FORMFILE  # one small Formfile for every real test

pytestmark = [pytest.mark.real, pytest.mark.slow]

PAGE = "<h1>hello from the fog</h1>\n"
HTTP_WAIT_S = 60.0  # the marker comes once the entrypoint started; python needs a moment


def build_small_image(work: Path) -> BuildResult:
    context = work / "ctx"
    (context / "app").mkdir(parents=True)
    (context / "app" / "index.html").write_text(PAGE)
    formfile = hash_passwords(parse(FORMFILE), lambda user: "testsalt" + user)
    return build(formfile, context, work_dir=work / "build", cache_dir=default_cache_dir())


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def stock_kernels_cannot_use_kvm() -> bool:
    """True on a PVM host or one without /dev/kvm: the probe must end in TCG there."""
    return Path("/sys/module/kvm_pvm").exists() or not Path("/dev/kvm").exists()


def cmdline_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def run(*argv: str) -> str:
    done = await trio.run_process(list(argv), capture_stdout=True)
    return done.stdout.decode()


async def http_get(port: int) -> httpx.Response:
    """GET / through the forward, retrying while the guest's server starts."""
    last: Exception | None = None
    async with httpx.AsyncClient() as client:
        with trio.move_on_after(HTTP_WAIT_S):
            while True:
                try:
                    return await client.get(f"http://127.0.0.1:{port}/index.html", timeout=10)
                except httpx.HTTPError as e:
                    last = e
                    await trio.sleep(0.5)
    raise AssertionError(f"no HTTP answer on 127.0.0.1:{port} within {HTTP_WAIT_S} s: {last!r}")


async def test_a_built_image_boots_answers_stops_restarts_and_a_kill_is_reported(
    tmp_path: Path,
) -> None:
    missing = qemu_tools_missing() + builder_tools_missing()
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    built = await trio.to_thread.run_sync(build_small_image, tmp_path / "img")
    links_before = host_links()
    netns_before = netns_names()
    data = tmp_path / "data"

    async with open_qemu_driver(data, accel="auto", vms_max=2) as driver:
        ns = driver.netns_name
        assert ns is not None
        assert ns.startswith("fvm-")
        assert ns not in netns_before
        assert ns in netns_names()
        spec = VmSpec(
            key="0123456789abcdef0123456789abcdef-0",
            image=built.image_path,
            kernel=built.kernel_path,
            initrd=built.initrd_path,
            vcpus=1,
            memory_mb=512,
            disk_gb=2,
            expose=(8000,),
        )
        created = await driver.create(spec)
        assert created.status == "Created"
        vm_dir = data / "vms" / spec.key
        assert (vm_dir / "disk.qcow2").is_file()
        disk = await run("qemu-img", "info", "--output=json", str(vm_dir / "disk.qcow2"))
        assert '"virtual-size": 2147483648' in disk  # resized to disk_gb
        assert str(built.image_path.resolve()) in disk  # an overlay over the read-only image
        (endpoint,) = created.endpoints
        assert endpoint["guest_port"] == 8000
        assert endpoint["host"] == "127.0.0.1"

        started = await driver.start(spec.key)
        assert started.status == "Started", started.detail
        # On these machines /dev/kvm is PVM: the probe must have fallen back to TCG.
        assert started.accelerator in ("tcg", "kvm")
        if stock_kernels_cannot_use_kvm():
            assert started.accelerator == "tcg"
        assert started.pid is not None
        assert started.boot_ms is not None
        cmdline = cmdline_of(started.pid)
        assert cmdline[0].endswith(b"qemu-system-x86_64")
        assert b"q35" in cmdline
        assert cmdline[cmdline.index(b"-smp") + 1] == b"1"  # the spec's vCPUs
        assert cmdline[cmdline.index(b"-m") + 1] == b"512"  # and memory
        assert BOOT_MARKER in driver.console_tail(spec.key)
        assert BOOT_MARKER in (vm_dir / "console.log").read_text(errors="replace")

        # The guest's devices live in the VM netns only.
        inside = await run("ip", "netns", "exec", ns, "ip", "-o", "link")
        assert "fvmbr0" in inside
        assert "fvt1" in inside
        assert host_links() - links_before == set()  # nothing new in the host's namespace

        answer = await http_get(endpoint["port"])
        assert answer.status_code == 200
        assert answer.text == PAGE
        metrics = driver.metrics(spec.key)
        assert metrics["cpu_seconds_total"] > 0
        assert metrics["memory_rss_bytes"] > 0

        stopped = await driver.stop(spec.key, timeout_s=60)
        assert stopped.status == "Stopped"
        assert stopped.pid is None
        assert "ACPI shutdown" in stopped.detail  # the guest powered off, it was not killed
        assert not alive(started.pid)

        again = await driver.start(spec.key)
        assert again.status == "Started", again.detail
        assert again.endpoints == created.endpoints  # the same host port after a restart
        assert again.pid is not None
        assert again.pid != started.pid
        answer = await http_get(endpoint["port"])
        assert answer.text == PAGE

        os.kill(again.pid, signal.SIGKILL)
        with trio.fail_after(10):
            change = await driver.next_change()
        assert change.key == spec.key
        assert change.status == "Killed"
        assert str(again.pid) in change.detail
        info = driver.info(spec.key)
        assert info is not None
        assert info.status == "Killed"

        await driver.delete(spec.key)
        assert driver.info(spec.key) is None
        assert not vm_dir.exists()

    assert ns not in netns_names()  # others' netns may come and go meanwhile
    assert host_links() - links_before == set()  # nothing new in the host's namespace


async def test_bad_creates_are_refused_with_the_reason_and_leave_nothing(tmp_path: Path) -> None:
    missing = qemu_tools_missing(netns=False)
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    image = tmp_path / "big.qcow2"
    await run("qemu-img", "create", "-q", "-f", "qcow2", str(image), "3G")
    (tmp_path / "vmlinuz").write_bytes(b"not booted")
    (tmp_path / "initrd.img").write_bytes(b"not booted")
    data = tmp_path / "data"
    async with open_qemu_driver(data, netns=False, accel="tcg") as driver:

        def spec(**kw: object) -> VmSpec:
            fields: dict[str, object] = {
                "key": "k-0",
                "image": image,
                "kernel": tmp_path / "vmlinuz",
                "initrd": tmp_path / "initrd.img",
                "vcpus": 1,
                "memory_mb": 256,
                "disk_gb": 4,
                "expose": (8000,),
            }
            fields.update(kw)
            return VmSpec(**fields)  # type: ignore[arg-type]

        with pytest.raises(VmError, match=r"the image .*absent\.qcow2 does not exist"):
            await driver.create(spec(image=tmp_path / "absent.qcow2"))
        with pytest.raises(VmError, match="cannot make the disk 2 GB"):
            await driver.create(spec(disk_gb=2))  # smaller than the 3 GB image
        with pytest.raises(VmError, match="memory_mb is 64"):
            await driver.create(spec(memory_mb=64))
        assert driver.infos() == {}
        assert not (data / "vms" / "k-0").exists()
        with pytest.raises(VmError, match="no VM 'k-0'"):
            await driver.start("k-0")

        as_protocol: VmDriver = driver  # what the supervisor holds
        created = await as_protocol.create(spec())  # netns=False: QEMU's own hostfwd ports
        assert created.status == "Created"
        assert created.endpoints[0]["host"] == "127.0.0.1"
        with pytest.raises(VmError, match="exists already"):
            await driver.create(spec())
        await driver.delete("k-0")
        assert not (data / "vms" / "k-0").exists()
