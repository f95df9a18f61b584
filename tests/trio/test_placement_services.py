"""The placement service and the VM supervisor, driven together over one shared replica.

Three nodes share one ``State`` (as if gossip were instant); each runs the real
``PlacementService`` and ``VmSupervisor`` code with an in-memory VM driver, so the rules that
decide who places, who has room and what runs are tested without QEMU.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from node.ledger.builds import build_digest
from node.ledger.op import sign_op
from node.ledger.state import State, instance_id_of
from node.placement.core import Resources
from node.placement.service import PlacementService
from node.vmm.driver import VmError, VmInfo, VmSpec
from node.vmm.reconcile import next_action
from node.vmm.supervisor import VmSupervisor
from tests.helpers import NET, seeded_keys, wait_until

OWNER, NODE_A, NODE_B, NODE_C = seeded_keys(4, seed=11)


class Fog:
    def __init__(self) -> None:
        self.state = State(NET)
        self.clock_ms = 1_770_000_000_000
        self.alive = {k.address for k in (NODE_A, NODE_B, NODE_C)}
        self.dead: set[str] = set()

    def ingest(self, key: Any, kind: str, payload: dict[str, Any]) -> None:
        self.clock_ms += 1
        made = sign_op(key, NET, (self.clock_ms, 0), kind, payload)
        self.state.ingest(made.body, made.sig)


class Host:
    def __init__(self, fog: Fog, key: Any) -> None:
        self.fog, self.key = fog, key

    @property
    def address(self) -> str:
        return str(self.key.address)

    def read(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self.fog.state)

    async def write(self, kind: str, payload: dict[str, Any]) -> None:
        self.fog.ingest(self.key, kind, payload)

    def alive(self) -> set[str]:
        return set(self.fog.alive)

    def dead(self) -> set[str]:
        return set(self.fog.dead)

    def now_ms(self) -> int:
        return self.fog.clock_ms


class MemoryDriver:
    name = "simulated"

    def __init__(self) -> None:
        self.vms: dict[str, VmInfo] = {}
        self.specs: dict[str, VmSpec] = {}
        self.changes: trio.MemorySendChannel[VmInfo]
        self.changes, self._changes = trio.open_memory_channel[VmInfo](16)

    async def create(self, spec: VmSpec) -> VmInfo:
        self.specs[spec.key] = spec
        self.vms[spec.key] = VmInfo(spec.key, "Created")
        return self.vms[spec.key]

    async def start(self, key: str) -> VmInfo:
        self.vms[key] = VmInfo(key, "Started", pid=1000 + len(self.vms), accelerator="simulated")
        return self.vms[key]

    async def stop(self, key: str, timeout_s: float = 30.0) -> VmInfo:
        self.vms[key] = VmInfo(key, "Stopped")
        return self.vms[key]

    async def reboot(self, key: str) -> VmInfo:
        return await self.start(key)

    async def delete(self, key: str) -> None:
        if key not in self.vms:
            raise VmError(f"no VM {key}")
        del self.vms[key]

    def info(self, key: str) -> VmInfo | None:
        return self.vms.get(key)

    def infos(self) -> dict[str, VmInfo]:
        return dict(self.vms)

    async def next_change(self) -> VmInfo:
        return await self._changes.receive()

    def metrics(self, key: str) -> dict[str, float]:
        return {}

    def console_tail(self, key: str, bytes_max: int = 65536) -> str:
        return ""

    async def kill(self, key: str) -> None:
        self.vms[key] = VmInfo(key, "Killed")
        await self.changes.send(self.vms[key])


FORMFILE = 'NAME web\nVCPU {vcpus}\nMEM 512\nDISK 5\nEXPOSE 8000\nENTRYPOINT ["true"]\n'


def _built(fog: Fog, vcpus: int) -> str:
    formfile = FORMFILE.format(vcpus=vcpus)
    build_id = build_digest(OWNER.address, formfile, "")
    fog.ingest(OWNER, "build.request", {"name": f"b{vcpus}", "formfile": formfile})
    fog.ingest(
        NODE_A,
        "build.status",
        {"build_id": build_id, "status": "Built", "image": "1" * 64, "manifest": "2" * 64},
    )
    return build_id


async def _blob(digest: str) -> Path:
    return Path("/nonexistent") / digest


async def _fog(nursery: trio.Nursery, sizes: dict[Any, int]) -> tuple[Fog, dict[str, Any]]:
    fog = Fog()
    for key in (NODE_A, NODE_B, NODE_C):
        fog.ingest(key, "node.announce", {"roles": ["vm-host"]})
    parts: dict[str, Any] = {}
    for key, vcpus in sizes.items():
        host = Host(fog, key)
        driver = MemoryDriver()
        supervisor = VmSupervisor(
            host,
            driver,
            Resources(vcpus=vcpus, memory_mb=4096, disk_gb=50),
            fetch_blob=_blob,
            poll_s=0.01,
        )
        fog.ingest(key, "node.capacity", {"capacity": _capacity(supervisor)})
        supervisor.capacity_changed = _reporter(fog, key, supervisor)
        placement = PlacementService(host, random.Random(1), poll_s=0.01, answer_timeout_ms=50)
        await nursery.start(placement.run)
        await nursery.start(supervisor.run)
        parts[key.address] = (driver, supervisor, placement)
    return fog, parts


def _reporter(fog: Fog, key: Any, supervisor: VmSupervisor) -> Callable[[], None]:
    def report() -> None:
        fog.ingest(key, "node.capacity", {"capacity": _capacity(supervisor)})

    return report


def _capacity(supervisor: VmSupervisor) -> dict[str, Any]:
    return {
        "cpu_total_cores": 8,
        "cpu_available_millicores": 8000,
        "memory_total_bytes": 1,
        "memory_available_bytes": 1,
        "storage_total_bytes": 1,
        "storage_available_bytes": 1,
        **supervisor.capacity(),
    }


@pytest.fixture(autouse=True)
def _no_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    # The supervisor reads the manifest blob for the image paths; these tests have none.
    async def spec(self: VmSupervisor, desired: Any) -> VmSpec:
        return VmSpec(
            key=desired.key,
            image=Path("/img"),
            kernel=Path("/k"),
            initrd=Path("/i"),
            vcpus=desired.need.vcpus,
            memory_mb=desired.need.memory_mb,
            disk_gb=desired.need.disk_gb,
            expose=desired.expose,
        )

    monkeypatch.setattr(VmSupervisor, "_spec", spec)


def _ship(fog: Fog, name: str, build_id: str, via: Any = NODE_A, replicas: int = 1) -> str:
    payload = {"name": name, "build_id": build_id, "replicas": replicas, "via": via.address}
    fog.ingest(OWNER, "instance.create", payload)
    return instance_id_of(OWNER.address, name)


def _instance(fog: Fog, instance_id: str) -> dict[str, Any]:
    instance = fog.state.instance(instance_id)
    assert instance is not None
    return instance


async def test_an_instance_lands_on_a_host_with_room_and_starts() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            fog, parts = await _fog(nursery, {NODE_A: 1, NODE_B: 1, NODE_C: 4})
            iid = _ship(fog, "web", _built(fog, 2))
            await wait_until(lambda: _instance(fog, iid)["status"] == "Started")
            instance = _instance(fog, iid)
            assert instance["node_id"] == NODE_C.address
            driver = parts[NODE_C.address][0]
            assert next(iter(driver.specs.values())).vcpus == 2
            supervisor = parts[NODE_C.address][1]
            assert supervisor.book.free.vcpus == 2
            nursery.cancel_scope.cancel()


async def test_a_request_that_fits_nowhere_fails_naming_the_largest_free_slot() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            fog, _ = await _fog(nursery, {NODE_A: 1, NODE_B: 2, NODE_C: 4})
            iid = _ship(fog, "huge", _built(fog, 16))
            await wait_until(lambda: _instance(fog, iid)["error"] is not None)
            error = _instance(fog, iid)["error"]
            assert "16 vCPU" in error
            assert "4 vCPU" in error
            assert NODE_C.address[:8] in error
            nursery.cancel_scope.cancel()


async def test_racing_requests_for_the_last_room_never_both_win() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            fog, parts = await _fog(nursery, {NODE_A: 0, NODE_B: 0, NODE_C: 3})
            build = _built(fog, 2)
            # Two placers at once, each for an instance of 2 vCPU; the host has 3.
            one = _ship(fog, "one", build, via=NODE_A)
            two = _ship(fog, "two", build, via=NODE_B)
            await wait_until(
                lambda: all(
                    _instance(fog, i)["status"] == "Started" or _instance(fog, i)["error"]
                    for i in (one, two)
                )
            )
            started = [i for i in (one, two) if _instance(fog, i)["status"] == "Started"]
            assert len(started) == 1
            supervisor = parts[NODE_C.address][1]
            assert supervisor.book.committed.vcpus == 2
            nursery.cancel_scope.cancel()


async def test_replicas_go_to_distinct_hosts_and_a_dead_host_is_rescheduled() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            fog, _parts = await _fog(nursery, {NODE_A: 2, NODE_B: 2, NODE_C: 2})
            iid = _ship(fog, "web", _built(fog, 1), replicas=2)
            await wait_until(
                lambda: all(s["status"] == "Started" for s in _instance(fog, iid)["slots"])
            )
            hosts = [s["node_id"] for s in _instance(fog, iid)["slots"]]
            assert len(set(hosts)) == 2
            victim = next(h for h in hosts if h != NODE_A.address)
            fog.alive.discard(victim)
            fog.dead.add(victim)
            await wait_until(
                lambda: all(
                    s["status"] == "Started" and s["node_id"] != victim
                    for s in _instance(fog, iid)["slots"]
                )
            )
            slots = _instance(fog, iid)["slots"]
            assert len({s["node_id"] for s in slots}) == 2
            moved = next(s for s in slots if s["attempt"] > 1)
            assert moved["reason"] == f"host {victim} declared dead"
            nursery.cancel_scope.cancel()


async def test_stop_start_delete_and_a_killed_vm() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            fog, parts = await _fog(nursery, {NODE_A: 0, NODE_B: 4, NODE_C: 0})
            iid = _ship(fog, "web", _built(fog, 1))
            await wait_until(lambda: _instance(fog, iid)["status"] == "Started")
            driver, supervisor, _ = parts[NODE_B.address]
            fog.ingest(OWNER, "instance.stop", {"name": "web"})
            await wait_until(lambda: _instance(fog, iid)["status"] == "Stopped")
            fog.ingest(OWNER, "instance.start", {"name": "web"})
            await wait_until(lambda: _instance(fog, iid)["status"] == "Started")
            key = next(iter(driver.vms))
            await driver.kill(key)
            await wait_until(lambda: _instance(fog, iid)["status"] == "Killed")
            await trio.sleep(0.1)  # it stays Killed: no restart behind the owner's back
            assert _instance(fog, iid)["status"] == "Killed"
            fog.ingest(OWNER, "instance.start", {"name": "web"})
            await wait_until(lambda: _instance(fog, iid)["status"] == "Started")
            fog.ingest(OWNER, "instance.delete", {"name": "web"})
            await wait_until(lambda: not driver.vms and supervisor.book.keys() == [])
            nursery.cancel_scope.cancel()


def test_reconcile_does_one_thing_at_a_time() -> None:
    from node.placement.duty import Desired

    def desired(**changes: Any) -> Desired:
        fields: dict[str, Any] = {
            "instance_id": "a" * 40,
            "slot": 0,
            "build_id": "b" * 64,
            "need": Resources(vcpus=1),
            "expose": (),
            "running": True,
            "desired_at": 10,
            "reboot_at": 0,
            "status": None,
            "status_at": 0,
            "rebooted_for": 0,
        }
        return Desired(**{**fields, **changes})

    def vm(status: str) -> VmInfo:
        return VmInfo("k", status)

    assert next_action(None, None) is None
    assert next_action(None, vm("Started")) == "delete"
    assert next_action(desired(), None) == "create"
    assert next_action(desired(running=False), None) is None
    assert next_action(desired(), vm("Created")) == "start"
    assert next_action(desired(), vm("Stopped")) == "start"
    assert next_action(desired(), vm("Started")) is None
    assert next_action(desired(running=False), vm("Started")) == "stop"
    assert next_action(desired(reboot_at=5), vm("Started")) == "reboot"
    assert next_action(desired(reboot_at=5, rebooted_for=5), vm("Started")) is None
    assert next_action(desired(), vm("Killed"), failed_at_ms=20) is None
    assert next_action(desired(desired_at=30), vm("Killed"), failed_at_ms=20) == "start"
