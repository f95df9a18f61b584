"""What this node must do about instances: place slots (as placer), answer asks and run VMs (as host).

Theory of operation
-------------------
There is no scheduler to hand placements out, so every node reads the same replicated views
(``node.ledger.state.State.instance``, whose ``slots`` come from ``node.ledger.placement``) and
this module's pure functions tell it its share:

* **Placer duty** (``place_duties``). A slot is placed by its instance's ``via`` (the node that
  took the create) while that node is alive; otherwise by the alive node that ranks first by
  rendezvous hash of the instance id, so a dead ``via`` leaves no slot stranded. A slot needs
  placing when nothing was ever asked, when this placer's ask went unanswered past its timeout
  (it restarted and forgot), when another placer's ask has been silent for three timeouts (a
  takeover), or when its host is declared dead (it is **rescheduled**: the next attempt, never on
  the dead host nor on a host of another slot of the same instance, and the ask says why).
* **Host duty**. ``asks_for`` lists the asks naming this node that it has not answered yet;
  ``bound_to`` lists the slots this node holds, with what the owner wants of each (``Desired``).

Every function takes plain views and returns plain values: ``now_ms`` and the alive/dead sets
are arguments, so the node, the tests and the simulator can drive the same rules.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from node.pack.formfile import FormfileError, parse
from node.pack.model import Formfile
from node.placement.core import Resources

__all__ = [
    "TAKEOVER_TIMEOUTS",
    "Ask",
    "Desired",
    "PlaceDuty",
    "asks_for",
    "bound_to",
    "capacity_view",
    "need_of",
    "place_duties",
    "placer_of",
    "vm_key",
]

# Another placer's silent ask is taken over after this many answer timeouts.
TAKEOVER_TIMEOUTS: Final = 3
# Parsed Formfiles kept (the services read every shipped build's needs twice a second).
NEEDS_CACHED_MAX: Final = 256


def vm_key(instance_id: str, slot: int) -> str:
    """The host's name for a slot's VM (files, netns tap, metrics label)."""
    return f"{instance_id[:32]}-{slot}"


def _formfile(text: str | None) -> Formfile | None:
    if not text:
        return None
    try:
        return parse(text, path="Formfile")
    except FormfileError:
        return None


@functools.lru_cache(maxsize=NEEDS_CACHED_MAX)
def need_of(formfile_text: str | None) -> tuple[Resources, tuple[int, ...]] | None:
    """What a slot of a build needs (its Formfile's VCPU, MEM, DISK, GPUs) and its EXPOSE ports;
    None when the text does not parse (then nothing places it)."""
    formfile = _formfile(formfile_text)
    if formfile is None:
        return None
    gpus = sum(int(getattr(g, "count", 1) or 1) for g in formfile.gpus)
    need = Resources(
        vcpus=formfile.vcpus, memory_mb=formfile.memory_mb, disk_gb=formfile.disk_gb, gpus=gpus
    )
    return need, tuple(formfile.expose)


def _rank_score(instance_id: str, node: str) -> bytes:
    return hashlib.sha256(f"formation:place:v1\n{instance_id}\n{node.lower()}".encode()).digest()


def placer_of(instance: Mapping[str, Any], alive: Collection[str]) -> str | None:
    """Who places ``instance``'s slots: its ``via`` while alive, else the rendezvous first."""
    via = instance.get("via")
    if via and via in alive:
        return str(via)
    if not alive:
        return None
    instance_id = str(instance["instance_id"])
    return max(alive, key=lambda node: _rank_score(instance_id, node))


def capacity_view(
    nodes: Iterable[Mapping[str, Any]], alive: Collection[str]
) -> dict[str, Resources]:
    """What each alive node offering VMs has free, by its last ``node.capacity`` report."""
    view: dict[str, Resources] = {}
    for node in nodes:
        node_id = str(node.get("node_id"))
        capacity = node.get("capacity")
        if node_id not in alive or not isinstance(capacity, Mapping):
            continue
        if not isinstance(capacity.get("vm_free"), Mapping):
            continue
        try:
            view[node_id] = Resources.from_json(capacity["vm_free"])
        except ValueError:
            continue
    return view


@dataclass(frozen=True)
class PlaceDuty:
    """A slot this node must (re)place, and with what."""

    instance_id: str
    slot: int
    need: Resources
    attempt_first: int
    exclude: tuple[str, ...]
    reason: str

    @property
    def key(self) -> str:
        return f"{self.instance_id}:{self.slot}"


def place_duties(
    instances: Iterable[Mapping[str, Any]],
    needs: Mapping[str, Resources],
    *,
    me: str,
    alive: Collection[str],
    dead: Collection[str],
    now_ms: int,
    answer_timeout_ms: int,
) -> list[PlaceDuty]:
    """The slots ``me`` must place now. ``needs`` maps a build id to what a slot of it needs
    (builds not Built, or not parsed, are absent: their instances wait). ``alive`` includes
    ``me``."""
    duties: list[PlaceDuty] = []
    for instance in instances:
        need = needs.get(str(instance.get("build_id")))
        slots = instance.get("slots") or []
        if need is None or not slots or placer_of(instance, alive) != me:
            continue
        held = [s["node_id"] for s in slots if s.get("node_id")]
        for slot in slots:
            duty = _slot_duty(slot, held, me, dead, now_ms, answer_timeout_ms)
            if duty is not None:
                attempt_first, exclude, reason = duty
                duties.append(
                    PlaceDuty(
                        str(instance["instance_id"]),
                        int(slot["slot"]),
                        need,
                        attempt_first,
                        exclude,
                        reason,
                    )
                )
    return duties


def _slot_duty(
    slot: Mapping[str, Any],
    held: list[str],
    me: str,
    dead: Collection[str],
    now_ms: int,
    answer_timeout_ms: int,
) -> tuple[int, tuple[str, ...], str] | None:
    host = slot.get("node_id")
    asked = int(slot.get("attempt_asked") or 0)
    others = tuple(sorted(set(held) - {host} if host else set(held)))
    if host:
        if host in dead:
            return asked + 1, tuple(sorted({*others, host})), f"host {host} declared dead"
        return None
    if slot.get("error"):
        return None  # failed: nobody had room; the owner sees the message
    if asked == 0:
        return 1, others, "new instance"
    asked_at = int(slot.get("asked_at") or 0)
    asked_host = slot.get("asked_host")
    answer = (slot.get("answers") or {}).get(asked_host) or {}
    refused = answer.get("attempt") == asked and answer.get("accepted") is False
    silent_ms = now_ms - asked_at
    mine = slot.get("placed_by") == me
    if mine and (refused or silent_ms > answer_timeout_ms):
        # This placer's own ask, not followed up (it restarted): carry on from there.
        skip = {str(asked_host)} if asked_host else set()
        return asked + 1, tuple(sorted({*others, *skip})), "retry after a restart"
    if not mine and silent_ms > TAKEOVER_TIMEOUTS * answer_timeout_ms:
        return asked + 1, others, f"placer {slot.get('placed_by')} went silent"
    return None


@dataclass(frozen=True)
class Ask:
    """An ask naming this host that it has not answered."""

    instance_id: str
    slot: int
    attempt: int
    need: Resources

    @property
    def key(self) -> str:
        return f"{self.instance_id}:{self.slot}"


def asks_for(
    instances: Iterable[Mapping[str, Any]], needs: Mapping[str, Resources], me: str
) -> list[Ask]:
    """Asks naming ``me`` whose attempt ``me`` has not answered yet."""
    asks: list[Ask] = []
    for instance in instances:
        need = needs.get(str(instance.get("build_id")))
        for slot in instance.get("slots") or []:
            if slot.get("asked_host") != me:
                continue
            attempt = int(slot.get("attempt_asked") or 0)
            mine = (slot.get("answers") or {}).get(me) or {}
            if attempt and int(mine.get("attempt") or 0) < attempt:
                asks.append(
                    Ask(str(instance["instance_id"]), int(slot["slot"]), attempt, need or _NONE)
                )
    return asks


# An ask for a build this host cannot read is refused: it cannot run what it cannot see.
_NONE: Final = Resources()


@dataclass(frozen=True)
class Desired:
    """A slot this host holds, and what its owner wants of it."""

    instance_id: str
    slot: int
    build_id: str
    need: Resources
    expose: tuple[int, ...]
    running: bool  # desired_state == "running"
    desired_at: int  # when the owner last asked (a Killed VM boots again on a newer ask)
    reboot_at: int  # the owner's latest reboot request (0: none)
    status: str | None  # what this host last reported
    status_at: int
    rebooted_for: int  # the reboot request this host last carried out

    @property
    def key(self) -> str:
        return vm_key(self.instance_id, self.slot)


def bound_to(
    instances: Iterable[Mapping[str, Any]],
    needs: Mapping[str, tuple[Resources, tuple[int, ...]]],
    me: str,
) -> list[Desired]:
    """The slots ``me`` holds (by ``slot_view``'s rule), with what their owners want."""
    held: list[Desired] = []
    for instance in instances:
        build_id = str(instance.get("build_id"))
        need, expose = needs.get(build_id, (_NONE, ()))
        for slot in instance.get("slots") or []:
            if slot.get("node_id") != me:
                continue
            held.append(
                Desired(
                    instance_id=str(instance["instance_id"]),
                    slot=int(slot["slot"]),
                    build_id=build_id,
                    need=need,
                    expose=expose,
                    running=instance.get("desired_state", "running") == "running",
                    desired_at=int(instance.get("desired_at") or 0),
                    reboot_at=int(instance.get("reboot_at") or 0),
                    status=slot.get("status"),
                    status_at=int(slot.get("status_at") or 0),
                    rebooted_for=int(slot.get("rebooted_for") or 0),
                )
            )
    return held
