"""The VM supervisor: the host side of placement, and the loop that keeps its VMs as wanted.

Theory of operation
-------------------
**Answering.** The supervisor owns this node's ``HostBook`` (``node.placement.core``), the only
authority over what its VMs may use. Every ``poll_s`` it reads the asks naming it that it has
not answered (``node.placement.duty.asks_for``) and answers each from the book, one at a time
(so two asks racing for the last room never both win), as a signed ``placement.answer`` with
what it has free. A slot it accepted but no longer holds (the placer moved on, the instance was
deleted) goes back to the book. At start the book is rebuilt from the slots the replicated
state says this node holds, so a restarted host neither forgets nor double-counts its room.
After every change the node's capacity report is sent early (``capacity_changed``), so placers
see the new ``vm_free`` within a gossip round instead of a heartbeat.

**Running.** For each slot it holds (``duty.bound_to``) and each VM the driver has, one worker
task at a time runs ``node.vmm.reconcile.next_action`` until it answers None: ``create`` (the
image, kernel and initrd come from the build's manifest blob, fetched by digest from peers if
this node lacks them), ``start``, ``stop``, ``reboot``, ``delete``. Each step's result is a
signed ``vm.status`` (status, pid, accelerator, endpoints, boot time), so every node sees it.
A VM that dies on its own (``VmDriver.next_change``) is reported ``Killed`` within seconds and
is booted again only when its owner asks again (``instance.start``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from node.placement.core import HostBook, Resources
from node.placement.duty import Desired, asks_for, bound_to, vm_key
from node.placement.service import NodeHost, shipped_view
from node.vmm.driver import VmDriver, VmError, VmInfo, VmSpec
from node.vmm.reconcile import next_action

__all__ = ["VmSupervisor"]

logger = logging.getLogger(__name__)

POLL_S: Final = 0.5
# One worker runs at most this many actions before it yields its slot to the next poll.
ACTIONS_PER_WORKER_MAX: Final = 6
MANIFEST_BYTES_MAX: Final = 1024 * 1024


@dataclass
class VmSupervisor:
    """Answers asks from the host's book and keeps its VMs as their owners want."""

    host: NodeHost
    driver: VmDriver
    total: Resources
    fetch_blob: Callable[[str], Awaitable[Path]]
    capacity_changed: Callable[[], None] = lambda: None
    poll_s: float = POLL_S
    book: HostBook = field(init=False)
    _busy: set[str] = field(default_factory=set)
    _failed_at: dict[str, int] = field(default_factory=dict)
    _slots: dict[str, tuple[str, int]] = field(default_factory=dict)  # vm key -> (instance, slot)

    def __post_init__(self) -> None:
        self.book = HostBook(self.total)

    # -- reads for the node ----------------------------------------------------------------

    def capacity(self) -> dict[str, dict[str, int]]:
        return {"vm_total": self.book.total.to_json(), "vm_free": self.book.free.to_json()}

    def vm_of(self, instance_id: str, slot: int) -> VmInfo | None:
        return self.driver.info(vm_key(instance_id, slot))

    def vm_metrics(self) -> dict[str, tuple[str, int, dict[str, float]]]:
        """vm key -> (instance id, slot, the driver's numbers)."""
        out = {}
        for key in self.driver.infos():
            if key in self._slots:
                instance_id, slot = self._slots[key]
                out[key] = (instance_id, slot, self.driver.metrics(key))
        return out

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        instances, needs, _ = self.host.read(shipped_view)
        for desired in bound_to(instances, needs, self.host.address):
            self.book.offer(f"{desired.instance_id}:{desired.slot}", desired.need)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            task_status.started(self)
            while True:
                await self.step(nursery)
                await trio.sleep(self.poll_s)

    async def step(self, nursery: trio.Nursery) -> None:
        me = self.host.address
        instances, needs, _ = self.host.read(shipped_view)
        changed = False
        for ask in asks_for(instances, {b: n for b, (n, _) in needs.items()}, me):
            if ask.need == Resources():
                answer_free, accepted = self.book.free, False
                reason = f"build of instance {ask.instance_id} is not Built here yet"
            else:
                answer = self.book.offer(ask.key, ask.need)
                answer_free, accepted, reason = answer.free, answer.accepted, answer.reason
            payload: dict[str, Any] = {
                "instance_id": ask.instance_id,
                "slot": ask.slot,
                "attempt": ask.attempt,
                "accepted": accepted,
                "free": answer_free.to_json(),
            }
            if not accepted:
                payload["reason"] = (reason or "no room")[:512]
            await self.host.write("placement.answer", payload)
            changed = True
        if changed:
            # Read again: the answers just written are what binds the slots.
            instances, needs, _ = self.host.read(shipped_view)
        held = {f"{d.instance_id}:{d.slot}": d for d in bound_to(instances, needs, me)}
        for key in list(self.book.keys()):  # released while iterating
            if key not in held:
                self.book.release(key)
                changed = True
        wanted = {d.key: d for d in held.values()}
        for key, desired in wanted.items():
            self._slots[key] = (desired.instance_id, desired.slot)
        for key in {*wanted, *self.driver.infos()}:
            if key in self._busy:
                continue
            action = next_action(wanted.get(key), self._vm(key), failed_at_ms=self._failed_at[key])
            if action is not None:
                self._busy.add(key)
                nursery.start_soon(self._work, key)
        if changed:
            self.capacity_changed()

    def _vm(self, key: str) -> VmInfo | None:
        """The driver's view of a VM; a failure seen for the first time is dated now, so only
        an owner's ask after it boots the VM again (``reconcile``)."""
        info = self.driver.info(key)
        failed = info is not None and info.status in ("Killed", "CriticalError")
        if not failed:
            self._failed_at.setdefault(key, 0)
        elif not self._failed_at.get(key):
            self._failed_at[key] = self.host.now_ms()
        return info

    def _desired(self, key: str) -> Desired | None:
        instances, needs, _ = self.host.read(shipped_view)
        for desired in bound_to(instances, needs, self.host.address):
            if desired.key == key:
                return desired
        return None

    async def _work(self, key: str) -> None:
        try:
            for _ in range(ACTIONS_PER_WORKER_MAX):
                desired = self._desired(key)
                action = next_action(desired, self._vm(key), failed_at_ms=self._failed_at[key])
                if action is None:
                    return
                try:
                    info = await self._perform(action, key, desired)
                except VmError as exc:
                    logger.warning("VM %s: %s failed: %s", key, action, exc)
                    self._failed_at[key] = self.host.now_ms()
                    if desired is not None:
                        await self._report(desired, VmInfo(key, "CriticalError", detail=str(exc)))
                    return
                if desired is not None and info is not None:
                    if info.status in ("Killed", "CriticalError"):
                        self._failed_at[key] = self.host.now_ms()
                    elif info.status == "Started":
                        self._failed_at[key] = 0
                    await self._report(desired, info, rebooted=action in ("start", "reboot"))
                    if info.status == "CriticalError":
                        return
        finally:
            self._busy.discard(key)

    async def _perform(self, action: str, key: str, desired: Desired | None) -> VmInfo | None:
        if action == "delete":
            await self.driver.delete(key)
            self._slots.pop(key, None)
            self._failed_at.pop(key, None)
            return None
        assert desired is not None
        if action == "create":
            return await self.driver.create(await self._spec(desired))
        if action == "start":
            return await self.driver.start(key)
        if action == "stop":
            return await self.driver.stop(key)
        return await self.driver.reboot(key)

    async def _spec(self, desired: Desired) -> VmSpec:
        def manifest_of(state: Any) -> str | None:
            build = state.build(desired.build_id)
            return build.get("manifest") if build else None

        digest = self.host.read(manifest_of)
        if not digest:
            raise VmError(f"build {desired.build_id} names no manifest: it is not Built")
        try:
            path = await self.fetch_blob(digest)
            manifest = json.loads(path.read_bytes()[:MANIFEST_BYTES_MAX])
            image = await self.fetch_blob(manifest["image"])
            kernel = await self.fetch_blob(manifest["kernel_blob"])
            initrd = await self.fetch_blob(manifest["initrd_blob"])
        except VmError:
            raise
        except Exception as exc:  # a peer without the blobs, a manifest that is not ours
            raise VmError(f"cannot fetch the image of build {desired.build_id}: {exc}") from None
        return VmSpec(
            key=desired.key,
            image=image,
            kernel=kernel,
            initrd=initrd,
            vcpus=desired.need.vcpus,
            memory_mb=desired.need.memory_mb,
            disk_gb=desired.need.disk_gb,
            expose=desired.expose,
        )

    async def _report(self, desired: Desired, info: VmInfo, *, rebooted: bool = False) -> None:
        payload: dict[str, Any] = {
            "instance_id": desired.instance_id,
            "slot": desired.slot,
            "status": info.status,
            "endpoints": [dict(e) for e in info.endpoints],
            "detail": info.detail[:1024],
        }
        for name, value in (
            ("pid", info.pid),
            ("accelerator", info.accelerator),
            ("guest_ip", info.guest_ip),
            ("boot_ms", info.boot_ms),
            ("started_at_ms", info.started_at_ms),
        ):
            if value is not None:
                payload[name] = value
        # A fresh boot carries out every reboot asked before it.
        payload["rebooted_for"] = desired.reboot_at if rebooted else desired.rebooted_for
        await self.host.write("vm.status", payload)

    async def _watch(self) -> None:
        """Report what VMs do on their own (a QEMU that died: Killed)."""
        while True:
            change = await self.driver.next_change()
            if change.key not in self._slots or change.key in self._busy:
                continue  # a worker acting on it reports what it finds
            # Report what is true now: the change may be stale by the time it is read.
            info = self._vm(change.key)
            desired = self._desired(change.key)
            if desired is not None and info is not None:
                await self._report(desired, info)
