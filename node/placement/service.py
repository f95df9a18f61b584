"""The placement service: the thin Trio driver that places the slots this node is placer of.

Theory of operation
-------------------
Every ``poll_s`` the service reads the shipped instances, the Built builds they boot and the
nodes' capacity reports, and asks ``node.placement.duty.place_duties`` which slots it must
place. Each becomes a ``SlotPlacement`` (``node.placement.core``), the same state machine the
simulator drives: its ``Ask`` is written as a signed ``placement.request`` naming the host and
the attempt; the host's ``placement.answer`` arrives through gossip like any op and is fed back
(``on_answer``); an ask left unanswered past ``answer_timeout_ms`` moves on (``on_timer``); a
``Fail`` is written as ``placement.fail`` with the message naming the largest free slot. Nothing
here decides who has room: hosts do, each from its own book (``node.vmm.supervisor``).

The candidates are the alive nodes that report ``vm_free`` (``duty.capacity_view``), so a host
declared dead is never asked, and a slot on it is rescheduled by the same loop (``duty``).
A restarted placer forgets its placements in flight; ``duty`` sees its unanswered asks and
carries on from the next attempt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio

from node.placement.core import Ask, Done, Fail, Resources, SlotPlacement
from node.placement.duty import PlaceDuty, capacity_view, need_of, place_duties

__all__ = ["NodeHost", "PlacementService", "PlacementStats", "shipped_view"]

POLL_S: Final = 0.5
ANSWER_TIMEOUT_MS: Final = 5_000
ATTEMPTS_MAX: Final = 5


class NodeHost(Protocol):
    """The node as the placement service and the VM supervisor see it."""

    @property
    def address(self) -> str: ...

    def read(self, fn: Callable[[Any], Any]) -> Any: ...

    async def write(self, kind: str, payload: dict[str, Any]) -> None: ...

    def alive(self) -> set[str]:
        """Nodes believed alive, this one included."""
        ...

    def dead(self) -> set[str]:
        """Nodes declared dead or gone."""
        ...

    def now_ms(self) -> int: ...


def shipped_view(
    state: Any,
) -> tuple[
    list[dict[str, Any]], dict[str, tuple[Resources, tuple[int, ...]]], list[dict[str, Any]]
]:
    """The shipped instances, what a slot of each Built build needs (and exposes), the nodes."""
    instances = [i for i in state.instances() if i.get("replicas")]
    needs: dict[str, tuple[Resources, tuple[int, ...]]] = {}
    for instance in instances:
        build_id = instance["build_id"]
        if build_id in needs:
            continue
        build = state.build(build_id)
        if build is None or build.get("status") != "Built":
            continue
        parsed = need_of(build.get("formfile"))
        if parsed is not None:
            needs[build_id] = parsed
    return instances, needs, state.nodes()


@dataclass
class PlacementStats:
    asks: int = 0
    placed: int = 0
    failed: int = 0
    refusals: int = 0
    retries: int = 0
    rescheduled: int = 0


@dataclass
class PlacementService:
    """Places the slots this node is placer of (module docstring)."""

    host: NodeHost
    rng: random.Random
    poll_s: float = POLL_S
    answer_timeout_ms: int = ANSWER_TIMEOUT_MS
    attempts_max: int = ATTEMPTS_MAX
    # Bin-packing with two choices packed closest to the central oracle in placement-1000
    # (docs/decisions.md D15); the fog keeps large slots free for large requests.
    policy: str = "binpack"
    stats: PlacementStats = field(default_factory=PlacementStats)
    _active: dict[str, tuple[PlaceDuty, SlotPlacement]] = field(default_factory=dict)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        while True:
            await self.step()
            await trio.sleep(self.poll_s)

    async def step(self) -> None:
        """One round: start the duties, feed answers and timeouts to the placements in flight."""
        now_ms = self.host.now_ms()
        alive, dead = self.host.alive(), self.host.dead()
        instances, needs, nodes = self.host.read(shipped_view)
        view = capacity_view(nodes, alive)
        duties = place_duties(
            instances,
            {b: n for b, (n, _) in needs.items()},
            me=self.host.address,
            alive=alive,
            dead=dead,
            now_ms=now_ms,
            answer_timeout_ms=self.answer_timeout_ms,
        )
        for duty in duties:
            if duty.key in self._active:
                continue
            placement = SlotPlacement(
                duty.key,
                duty.need,
                attempt_first=duty.attempt_first,
                attempts_max=self.attempts_max,
                answer_timeout_ms=self.answer_timeout_ms,
                policy=self.policy,
                exclude=duty.exclude,
            )
            self._active[duty.key] = (duty, placement)
            if duty.reason.startswith("host "):
                self.stats.rescheduled += 1
            await self._act(duty, placement, placement.start(view, now_ms, self.rng))
        slots = {
            f"{i['instance_id']}:{s['slot']}": s for i in instances for s in i.get("slots") or []
        }
        for key, (duty, placement) in list(self._active.items()):
            slot = slots.get(key)
            if slot is None:  # the instance is gone
                del self._active[key]
                continue
            result: Ask | Done | Fail | None = None
            asked = placement.tried[-1] if placement.tried else None
            answer = (slot.get("answers") or {}).get(asked) if asked else None
            if answer and answer.get("attempt") == placement.attempt:
                try:
                    free = Resources.from_json(answer.get("free"))
                except ValueError:
                    free = Resources()
                result = placement.on_answer(
                    str(asked),
                    placement.attempt,
                    bool(answer["accepted"]),
                    free,
                    view,
                    now_ms,
                    self.rng,
                )
            if result is None:
                result = placement.on_timer(now_ms, view, self.rng)
            await self._act(duty, placement, result)

    async def _act(
        self, duty: PlaceDuty, placement: SlotPlacement, result: Ask | Done | Fail | None
    ) -> None:
        if result is None:
            return
        if isinstance(result, Ask):
            self.stats.asks += 1
            if result.attempt > duty.attempt_first:
                self.stats.retries += 1
            await self.host.write(
                "placement.request",
                {
                    "instance_id": duty.instance_id,
                    "slot": duty.slot,
                    "host": result.host,
                    "attempt": result.attempt,
                    "reason": duty.reason[:256],
                },
            )
            return
        self._active.pop(duty.key, None)
        self.stats.refusals += placement.refusals
        if isinstance(result, Done):
            self.stats.placed += 1
            return
        self.stats.failed += 1
        await self.host.write(
            "placement.fail",
            {
                "instance_id": duty.instance_id,
                "slot": duty.slot,
                "attempt": max(placement.attempt, 0),
                "error": result.message[:1024],
            },
        )
