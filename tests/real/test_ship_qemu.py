"""``form pack ship`` to a real VM: build, place, boot under QEMU, answer HTTP through the forward.

The issue's done-when on a real node process with ``--vmm qemu`` (TCG here: the KVM probe boot
fails on these machines and the node says why): the small Formfile is built by the real
builder (layers cached by content), shipped, placed on the node by its own book, booted by QEMU
in the node's VM netns, and its HTTP server answers on the 127.0.0.1 endpoint the instance
record lists. Then stop (an ACPI shutdown) -> Stopped, start -> Started and answering again, a
``kill -9`` of the QEMU pid -> Killed in the replicated record, delete -> gone; and when the node
stops, its VM netns is gone too.

Needs root, QEMU, dnsmasq and the builder's tools (``scripts/ensure-system-deps.sh``): a missing
one fails the test, it is not skipped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.devnet import LocalFog
from node.names.records import build_label
from node.pack.service import builder_tools_missing
from node.vmm.qemu import qemu_tools_missing
from tests.helpers import Form, dig_short, form_runner
from tests.real.test_pack_e2e import FORMFILE

pytestmark = [pytest.mark.real, pytest.mark.slow]

BOOT_S_MAX = 300  # a TCG boot is ~45 s here; a loaded CI machine is slower


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.fixture
def fog(tmp_path: Path) -> Iterator[LocalFog]:
    missing = builder_tools_missing() + qemu_tools_missing()
    assert not missing, f"shipping to QEMU needs {missing}: run scripts/ensure-system-deps.sh run"
    (tmp_path / "fog").mkdir()
    fog = LocalFog(
        tmp_path / "fog",
        extra_args=("--heartbeat-s", "0"),
        mesh="on",
        vmm="qemu",
        log_level="info",
    )
    try:
        fog.start(0, ("--vm-capacity", "vcpus=2,memory_mb=2048,disk_gb=20"))
        # A second node with no VMs: it reaches the instance over the mesh, through node 0.
        fog.start(1, ("--vmm", "off"))
        yield fog
    finally:
        fog.stop_all()


def _form(tmp_path: Path, gateway: str) -> Form:
    return form_runner(tmp_path, gateway, timeout_s=1500)


def _get(form: Form, instance_id: str) -> dict[str, Any]:
    got = form("manage", "get", "--id", instance_id, "--json")
    assert got.returncode == 0, got.stderr
    return dict(json.loads(got.stdout))


def _wait_status(fog: LocalFog, form: Form, instance_id: str, status: str) -> dict[str, Any]:
    fog.wait(lambda: _get(form, instance_id)["status"] == status, timeout_s=BOOT_S_MAX)
    return _get(form, instance_id)


def _http(endpoint: dict[str, Any]) -> str:
    url = f"http://{endpoint['host']}:{endpoint['port']}/index.html"
    deadline = time.monotonic() + 60  # the entrypoint may take a moment after the marker
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _http_in(netns: str, url: str) -> str:
    """GET ``url`` from a process in ``netns``, retrying while the mesh route settles."""
    fetch = (
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    deadline = time.monotonic() + 60
    while True:
        got = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", fetch, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if got.returncode == 0 or time.monotonic() > deadline:
            assert got.returncode == 0, got.stderr[-2000:]
            return got.stdout
        time.sleep(1)


def test_ship_boots_a_vm_that_answers_and_follows_its_owner(tmp_path: Path, fog: LocalFog) -> None:
    # The node logs the netns it made for its VMs (other runs may hold their own meanwhile).
    made = re.search(r"VM network (fvm-[0-9a-f]+)", fog.log(0))
    assert made is not None, fog.log(0)[-2000:]
    assert made.group(1) in _netns()
    status = fog.status(0) or {}
    assert str(status.get("vmm", "")).startswith("QEMU"), status
    form = _form(tmp_path, str(status["gateway"]))
    assert form("init").returncode == 0
    assert form("account", "create", "--name", "shipper").returncode == 0
    context = tmp_path / "ctx"
    (context / "app").mkdir(parents=True)
    (context / "app" / "index.html").write_text("<h1>hello from the fog</h1>\n")
    (context / "Formfile").write_text(FORMFILE)

    shipped = form("pack", "ship", str(context), "--json", "--wait-s", "1200")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr + fog.log(0)[-4000:]
    instance = json.loads(shipped.stdout)
    instance_id = instance["instance_id"]
    assert instance["status"] == "Started"
    record = _get(form, instance_id)
    assert record["accelerator"] in ("kvm", "tcg")
    assert isinstance(record["pid"], int)
    (endpoint,) = record["endpoints"]
    assert endpoint["guest_port"] == 8000
    assert endpoint["host"] == "127.0.0.1"
    assert "hello from the fog" in _http(endpoint)
    logs = form("manage", "logs", "--id", instance_id)
    assert logs.returncode == 0, logs.stderr
    assert "formation: boot complete" in logs.stdout
    # Its build's name answers its mesh address (tests/real/test_dns_fog.py asks the rest).
    build_name = f"{build_label(instance['build_id'])}.fog"
    fog.wait(lambda: bool(dig_short(str(status["dns"]), build_name)), timeout_s=30)
    (mesh_address,) = dig_short(str(status["dns"]), build_name)
    assert _get(form, instance_id)["formnet_ip"] == mesh_address
    # The mesh: node 0's interface is in its VM netns; node 1 reaches the guest at the slot's
    # mesh address, over WireGuard to node 0, which DNATs it to the guest (no WireGuard inside).
    assert (fog.status(0) or {})["mesh"]["netns"] == made.group(1)
    mesh1 = (fog.status(1) or {})["mesh"]
    assert "hello from the fog" in _http_in(
        mesh1["netns"], f"http://{mesh_address}:8000/index.html"
    )

    assert form("manage", "stop", "--id", instance_id).returncode == 0
    _wait_status(fog, form, instance_id, "Stopped")
    fog.wait(lambda: not dig_short(str(status["dns"]), build_name), timeout_s=15)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{endpoint['port']}/", timeout=5)

    assert form("manage", "start", "--id", instance_id).returncode == 0
    record = _wait_status(fog, form, instance_id, "Started")
    assert "hello from the fog" in _http(record["endpoints"][0])

    # Reboot: the host carries out the owner's request once (the slot says which one).
    assert form("manage", "reboot", "--id", instance_id).returncode == 0
    asked = _get(form, instance_id)["reboot_at"]
    assert isinstance(asked, int)
    fog.wait(
        lambda: _get(form, instance_id)["slots"][0]["rebooted_for"] == asked,
        timeout_s=BOOT_S_MAX,
    )
    record = _get(form, instance_id)
    assert record["status"] == "Started"
    assert "hello from the fog" in _http(record["endpoints"][0])

    os.kill(record["pid"], signal.SIGKILL)
    record = _wait_status(fog, form, instance_id, "Killed")
    assert record["node_id"] == status["address"]

    assert form("manage", "delete", "--id", instance_id).returncode == 0
    fog.wait(lambda: not json.loads(form("manage", "list", "--json").stdout)["instances"])
    vms = fog.data_dir(0) / "vms"
    fog.wait(lambda: not [p for p in vms.iterdir() if not p.name.startswith(".")], timeout_s=30)

    fog.stop_all()
    assert made.group(1) not in _netns(), f"the node left its network namespace {made.group(1)}"


def test_a_node_killed_with_sigkill_cleans_up_at_its_next_start(tmp_path: Path) -> None:
    missing = qemu_tools_missing()
    assert not missing, f"the VM driver needs {missing}: run scripts/ensure-system-deps.sh run"
    fog = LocalFog(tmp_path, extra_args=("--heartbeat-s", "0"), vmm="qemu", log_level="info")
    orphan: subprocess.Popen[bytes] | None = None
    try:
        fog.start(0)
        first = re.findall(r"VM network (fvm-[0-9a-f]+):", fog.log(0))[-1]
        # What a VM left running would be: a process inside the node's VM netns.
        orphan = subprocess.Popen(["ip", "netns", "exec", first, "sleep", "600"])
        fog.procs[0].kill()
        fog.procs[0].wait()
        assert first in _netns()  # nobody could clean up
        fog.start(0)
        assert first not in _netns()
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        second = re.findall(r"VM network (fvm-[0-9a-f]+):", fog.log(0))[-1]
        assert second != first
        assert second in _netns()
    finally:
        fog.stop_all()
        if orphan is not None and orphan.poll() is None:
            orphan.kill()
    assert second not in _netns()
