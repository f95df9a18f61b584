"""The .fog zone of a real node process, asked with the real ``dig``.

A node with simulated VMs (``--vmm simulated``: this test is about names, not boots) ships an
image built by the real builder; once its instance is Started, ``dig @node -p PORT
<build_id>.fog`` answers the slot's mesh address (claimed by its host with ``mesh.claim``), the
node's own name answers its address, and within seconds of ``form manage stop`` the build's
name answers no address at all (only running instances are listed).

Needs dig (dnsutils) and the builder's tools: a missing one fails the test, it is not skipped.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.devnet import LocalFog
from node.names.records import build_label
from node.pack.service import builder_tools_missing
from tests.helpers import dig_short, form_runner

pytestmark = [pytest.mark.real, pytest.mark.slow]

FORMFILE = 'NAME named\nVCPU 1\nMEM 512\nEXPOSE 8000\nENTRYPOINT ["sleep", "infinity"]\n'
MESH = ipaddress.ip_network("10.42.0.0/16")


@pytest.fixture
def fog(tmp_path: Path) -> Iterator[LocalFog]:
    missing = builder_tools_missing() + ([] if shutil.which("dig") else ["dig (dnsutils)"])
    assert not missing, f"this test needs {missing}: run scripts/ensure-system-deps.sh"
    (tmp_path / "fog").mkdir()
    fog = LocalFog(tmp_path / "fog", extra_args=("--heartbeat-s", "0"), vmm="simulated")
    try:
        fog.start(0, ("--vm-capacity", "vcpus=2,memory_mb=2048,disk_gb=20"))
        yield fog
    finally:
        fog.stop_all()


def test_dig_finds_a_running_instance_and_loses_it_when_stopped(
    tmp_path: Path, fog: LocalFog
) -> None:
    status = fog.status(0) or {}
    dns = str(status["dns"])
    form = form_runner(tmp_path, str(status["gateway"]), timeout_s=900)
    assert form("init").returncode == 0
    assert form("account", "create", "--name", "namer").returncode == 0
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Formfile").write_text(FORMFILE)
    shipped = form("pack", "ship", str(context), "--json", "--wait-s", "600")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr + fog.log(0)[-3000:]
    instance = json.loads(shipped.stdout)
    build_id, instance_id = instance["build_id"], instance["instance_id"]

    def answers() -> list[str]:
        return dig_short(dns, f"{build_label(build_id)}.fog")

    fog.wait(lambda: bool(answers()), timeout_s=30)
    (address,) = answers()
    assert ipaddress.ip_address(address) in MESH
    assert dig_short(dns, f"{build_label(build_id)}.fog", tcp=True) == [address]
    assert dig_short(dns, f"{instance_id}.instance.fog") == [address]
    node_name = str(status["address"]).lower().removeprefix("0x")
    fog.wait(lambda: bool(dig_short(dns, f"{node_name}.node.fog")), timeout_s=30)
    (node_address,) = dig_short(dns, f"{node_name}.node.fog")
    assert ipaddress.ip_address(node_address) in MESH
    assert node_address != address
    ips = json.loads(form("manage", "get-ip", "--build-id", build_id, "--json").stdout)
    assert ips["ips"] == [address]

    assert form("manage", "stop", "--id", instance_id).returncode == 0
    fog.wait(lambda: not answers(), timeout_s=15)
    assert dig_short(dns, f"{instance_id}.instance.fog") == []
