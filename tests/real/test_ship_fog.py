"""Placement on a fog of three real node processes with different capacities.

Nothing is faked but the VMs (``--vmm simulated``: the driver answers like QEMU without
booting anything, so the test is about placement): builds run on the real builder, every
placement ask and answer is a signed op gossiped over libp2p, and each node's book decides
alone whether it has room. Creates through node 0's gateway land on nodes that fit; one that
fits nowhere gets 409 naming the largest free slot; a host killed with SIGKILL is declared dead
by the membership and its instance is rescheduled on a node with room, its record saying why.

Needs what the builder needs (root, debootstrap, qemu-img, mkfs.ext4): a missing tool fails
the test, it is not skipped.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.devnet import LocalFog
from node.pack.service import builder_tools_missing
from tests.helpers import Form, form_runner

pytestmark = [pytest.mark.real, pytest.mark.slow]

CAPACITIES = (
    "vcpus=1,memory_mb=1024,disk_gb=10",
    "vcpus=2,memory_mb=2048,disk_gb=20",
    "vcpus=4,memory_mb=4096,disk_gb=40",
)
FORMFILE = 'NAME {name}\nVCPU 2\nMEM {memory_mb}\nEXPOSE 8000\nENTRYPOINT ["sleep", "infinity"]\n'


@pytest.fixture
def fog(tmp_path: Path) -> Iterator[LocalFog]:
    missing = builder_tools_missing()
    assert not missing, f"the builder needs {missing}: run scripts/ensure-system-deps.sh run"
    (tmp_path / "fog").mkdir()
    fog = LocalFog(tmp_path / "fog", extra_args=("--heartbeat-s", "0"), vmm="simulated")
    try:
        for i, capacity in enumerate(CAPACITIES):
            fog.start(i, ("--vm-capacity", capacity))
        fog.wait(lambda: fog.converged(3), timeout_s=60)
        yield fog
    finally:
        fog.stop_all()


def _form(tmp_path: Path, gateway: str) -> Form:
    return form_runner(tmp_path, gateway, timeout_s=900)


def _ship(
    form: Form, tmp_path: Path, name: str, memory_mb: int
) -> subprocess.CompletedProcess[str]:
    context = tmp_path / name
    context.mkdir()
    (context / "Formfile").write_text(FORMFILE.format(name=name, memory_mb=memory_mb))
    return form("pack", "ship", str(context), "--json", "--wait-s", "600")


def _instance(form: Form, instance_id: str) -> dict[str, Any]:
    got = form("manage", "get", "--id", instance_id, "--json")
    assert got.returncode == 0, got.stderr
    return dict(json.loads(got.stdout))


def test_creates_land_where_they_fit_and_a_dead_hosts_instance_moves(
    tmp_path: Path, fog: LocalFog
) -> None:
    address = [str((fog.status(i) or {})["address"]) for i in range(3)]
    form = _form(tmp_path, str((fog.status(0) or {})["gateway"]))
    assert form("init").returncode == 0
    assert form("account", "create", "--name", "shipper").returncode == 0

    # 2 vCPU and 4096 MB: only node 2 has that much.
    big = _ship(form, tmp_path, "big", 4096)
    assert big.returncode == 0, big.stdout + big.stderr + fog.log(0)[-3000:]
    big_instance = json.loads(big.stdout)
    assert big_instance["status"] == "Started"
    assert big_instance["node_id"] == address[2]

    # 2 vCPU and 1024 MB: node 0 has 1 vCPU, node 2 no memory left: node 1.
    small = _ship(form, tmp_path, "small", 1024)
    assert small.returncode == 0, small.stdout + small.stderr
    small_instance = json.loads(small.stdout)
    assert small_instance["node_id"] == address[1]
    assert small_instance["endpoints"][0]["guest_port"] == 8000

    # A third fits nowhere: refused at once, naming the largest free slot; nothing recorded.
    third = _ship(form, tmp_path, "third", 1024)
    assert third.returncode == 1
    assert "no_capacity" in third.stderr
    assert "no node has room for 2 vCPU, 1024 MB, 5 GB" in third.stderr
    assert "the largest free slot is" in third.stderr
    listed = json.loads(form("manage", "list", "--json").stdout)
    assert sorted(i["name"] for i in listed["instances"]) == ["big", "small"]

    # Free node 2, then kill node 1 (the host of "small") without a goodbye.
    assert form("manage", "delete", "--id", big_instance["instance_id"]).returncode == 0
    fog.procs[1].kill()
    fog.procs[1].wait()

    def moved() -> bool:
        slot = _instance(form, small_instance["instance_id"])["slots"][0]
        return bool(slot["node_id"] == address[2] and slot["status"] == "Started")

    fog.wait(moved, timeout_s=90)
    slot = _instance(form, small_instance["instance_id"])["slots"][0]
    assert slot["attempt"] >= 2
    assert slot["reason"] == f"host {address[1]} declared dead"
    assert slot["placed_by"] == address[0]
