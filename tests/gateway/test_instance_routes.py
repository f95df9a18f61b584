"""Shipping through the gw: what it checks before anything is written, logs and metrics.

The gateway of ``test_app`` (real HTTP, a real replica) with builds and capacity reports put in
the replica as the signed ops a builder and a host would gossip.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from node.identity.keys import NodeKey
from node.ledger.builds import build_digest
from node.ledger.op import sign_op
from tests.gateway.test_app import ALICE, BOB, Gateway, gateway  # noqa: F401 (the fixture)
from tests.helpers import NET


@pytest.fixture
async def gw(gateway: Gateway) -> Gateway:  # noqa: F811 (test_app's fixture)
    return gateway


HOST = NodeKey(random.Random(41).randbytes(32))
FORMFILE = 'NAME web\nVCPU 2\nMEM 1024\nEXPOSE 8000\nENTRYPOINT ["true"]\n'
_CAPACITY = {
    "cpu_total_cores": 2,
    "cpu_available_millicores": 2000,
    "memory_total_bytes": 2**31,
    "memory_available_bytes": 2**31,
    "storage_total_bytes": 2**35,
    "storage_available_bytes": 2**35,
}


def _put(gw: Gateway, *made: tuple[Any, str, dict[str, Any]]) -> None:
    now_ms = int(time.time() * 1000)
    wire = []
    for i, (key, kind, payload) in enumerate(made):
        op = sign_op(key, NET, (now_ms, i), kind, payload)
        wire.append((op.body, op.sig))
    assert len(gw.replica.submit(wire, now_ms).accepted) == len(made)


def _build(gw: Gateway, *, built: bool = True, owner: Any = ALICE) -> str:
    build_id = build_digest(owner.address, FORMFILE, "")
    ops: list[tuple[Any, str, dict[str, Any]]] = [
        (owner, "build.request", {"name": "web", "formfile": FORMFILE}),
        (HOST, "node.announce", {"roles": ["builder", "vm-host"]}),
    ]
    if built:
        status = {"build_id": build_id, "status": "Built", "image": "1" * 64, "manifest": "2" * 64}
        ops.append((HOST, "build.status", status))
    _put(gw, *ops)
    return build_id


def _offer(gw: Gateway, **free: int) -> None:
    vm = {"vcpus": 0, "memory_mb": 0, "disk_gb": 0, "gpus": 0, **free}
    capacity = {**_CAPACITY, "vm_total": vm, "vm_free": vm}
    _put(gw, (HOST, "node.capacity", {"capacity": capacity}))


async def _ship(gw: Gateway, build_id: str, key: Any = ALICE) -> Any:
    body = {"name": "web", "build_id": build_id, "replicas": 1}
    return await gw.send("POST", "/v1/instance/create", body, key=key)


async def test_a_ship_is_checked_before_anything_is_written(gw: Gateway) -> None:
    missing = await _ship(gw, "ab" * 32)
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    build_id = _build(gw, built=False)
    before = gw.ops
    not_built = await _ship(gw, build_id)
    assert (not_built.status_code, not_built.json()["error"]) == (409, "not_built")
    foreign = await _ship(gw, build_id, key=BOB)
    assert (foreign.status_code, foreign.json()["error"]) == (403, "forbidden")
    assert gw.ops == before


async def test_no_room_anywhere_is_409_naming_the_largest_free_slot(gw: Gateway) -> None:
    build_id = _build(gw)
    nobody = await _ship(gw, build_id)
    assert nobody.status_code == 409
    assert nobody.json()["error"] == "no_capacity"
    assert "no node offers VMs" in nobody.json()["message"]
    _offer(gw, vcpus=1, memory_mb=4096, disk_gb=50)
    before = gw.ops
    small = await _ship(gw, build_id)
    assert small.status_code == 409
    message = small.json()["message"]
    assert message.startswith("no node has room for 2 vCPU, 1024 MB, 5 GB;")
    assert f"the largest free slot is 1 vCPU, 4096 MB, 50 GB on node {HOST.address}" in message
    assert gw.ops == before
    _offer(gw, vcpus=4, memory_mb=4096, disk_gb=50)
    made = await _ship(gw, build_id)
    assert made.status_code == 201, made.text
    instance = made.json()["instance"]
    assert instance["build_id"] == build_id
    assert [s["slot"] for s in instance["slots"]] == [0]
    assert instance["slots"][0]["node_id"] is None  # the placer's job, not the gateway's


async def test_logs_and_metrics_of_an_unplaced_or_foreign_instance(gw: Gateway) -> None:
    build_id = _build(gw)
    _offer(gw, vcpus=4, memory_mb=4096, disk_gb=50)
    instance_id = (await _ship(gw, build_id)).json()["instance_id"]
    logs = await gw.send("GET", f"/v1/instance/{instance_id}/logs", key=ALICE)
    assert (logs.status_code, logs.json()["error"]) == (409, "not_placed")
    bad = await gw.send("GET", f"/v1/instance/{instance_id}/logs?slot=3", key=ALICE)
    assert (bad.status_code, bad.json()["field"]) == (400, "slot")
    huge = await gw.send("GET", f"/v1/instance/{instance_id}/logs?bytes=999999999", key=ALICE)
    assert (huge.status_code, huge.json()["field"]) == (400, "bytes")
    foreign = await gw.send("GET", f"/v1/instance/{instance_id}/logs", key=BOB)
    assert foreign.status_code == 403
    metrics = await gw.send("GET", f"/v1/instance/{instance_id}/metrics", key=ALICE)
    assert metrics.status_code == 200
    assert metrics.json()["slots"] == [{"slot": 0, "node_id": None}]
