"""The op kinds of placement: a node asks a host to run an instance's slot, the host answers.

Theory of operation
-------------------
An instance asks for ``replicas`` copies; copy ``k`` is **slot** ``k``, a record of its own in
the ``placements`` table keyed ``"<instance_id>:<k>"`` (``slot_key``). Nothing in a slot is
written by its owner: the owner writes the instance (``instance.create``, ``.stop`` ...), nodes
write slots, each into its own report (``Record.reports[node]``), so two nodes never write the
same register and merging commutes.

* ``placement.request`` (the *placer*, a node that took the create or reschedules): "host H,
  run this slot; this is attempt A". A placer's later request replaces its earlier one (one
  LWW report per placer), which is how a slot moves: rescheduling is a new request.
* ``placement.answer`` (the *host*): accepted or refused, with its free capacity. **The host is
  the only authority over its capacity**: it answers from its own ``HostBook``
  (``node.placement.core``) one request at a time, so two requests racing for its last room
  never both win. A refusal names what it has free; the placer tries its next candidate.
* ``placement.fail`` (the placer): no node had room; the message names the largest free slot.
* ``vm.status`` (the host): the VM's upstream status (Created, Started, Stopped, Killed,
  CriticalError), its pid, accelerator, endpoints, boot time.

**Which host holds a slot** is computed when reading (``slot_view``): among hosts whose answer
*accepted* an attempt that some placer still asks of that host, the greatest attempt wins (a tie,
two placers asking two hosts at the same attempt, goes to the smaller address). A host that
accepted an attempt no placer asks any more (the placer timed out and moved on, or moved the
slot off a host it declared dead) holds nothing: it sees that in its own view and releases
the room. Only ops signed by nodes that announced themselves count, so an account cannot
pose as a host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from node.ledger.kinds import VM_RESOURCES
from node.ledger.op import Op, OpRejected
from node.ledger.record import Kind, Record, Tables
from node.ledger.schema import Addr, Bool, Enum, Int, ListOf, Obj, Str

__all__ = [
    "KINDS",
    "REPLICAS_MAX",
    "TABLES",
    "VM_STATUSES",
    "slot_key",
    "slot_view",
]

TABLES: Final = ("placements",)
# The upstream InstanceStatus values a running VM moves through (form-state instances.rs).
VM_STATUSES: Final = ("Created", "Started", "Stopped", "Killed", "CriticalError")
# Copies of one instance on distinct nodes: a fog of 16 nodes can hold them all.
REPLICAS_MAX: Final = 16

_INSTANCE_ID = Str(
    length_min=40, length_max=40, pattern=r"[0-9a-f]+", required=True, hint="an instance id"
)
_SLOT = Int(value_max=REPLICAS_MAX - 1, required=True)
_ATTEMPT = Int(value_min=1, value_max=1_000_000, required=True)
_ENDPOINT = Obj(
    spec={
        "guest_port": Int(value_min=1, value_max=65535, required=True),
        "host": Str(length_max=253, required=True),
        "port": Int(value_min=1, value_max=65535, required=True),
    }
)


def slot_key(instance_id: str, slot: int) -> str:
    """The ``placements`` key of an instance's slot."""
    return f"{instance_id}:{slot}"


def _anyone(op: Op, payload: dict[str, Any]) -> None:
    # Node-signed: whether the author is a node is decided when reading (``slot_view``).
    return None


def _answer_shape(op: Op, payload: dict[str, Any]) -> None:
    if payload.get("accepted") and payload.get("reason"):
        raise OpRejected("invalid_payload", "placement.answer: an acceptance carries no reason")


def _report(prefix: str, drop: tuple[str, ...] = ("instance_id", "slot")) -> Callable[..., None]:
    def apply(state: Tables, op: Op, payload: dict[str, Any]) -> None:
        record = state.record("placements", slot_key(payload["instance_id"], payload["slot"]))
        values = {f"{prefix}.{k}": v for k, v in payload.items() if k not in drop}
        values[f"{prefix}.at"] = op.wall_ms
        record.set_report(op.author, values, op.stamp)

    return apply


def slot_view(record: Record | None, is_node: Callable[[str], bool]) -> dict[str, Any]:
    """Who holds the slot, and what its host says of the VM (see the theory above)."""
    reports = {}
    if record is not None:
        reports = {n: r.to_dict() for n, r in record.reports.items() if is_node(n)}
    asks = {
        placer: r
        for placer, r in reports.items()
        if isinstance(r.get("ask.host"), str) and isinstance(r.get("ask.attempt"), int)
    }
    asked = {(r["ask.host"], r["ask.attempt"]) for r in asks.values()}
    bound = [
        (r["answer.attempt"], host)
        for host, r in reports.items()
        if r.get("answer.accepted") is True and (host, r.get("answer.attempt")) in asked
    ]
    # Greatest attempt; on a tie the smaller address (max over (attempt, -address) order).
    host = None
    attempt = 0
    if bound:
        attempt = max(a for a, _ in bound)
        host = min(h for a, h in bound if a == attempt)
    latest = max(asks.values(), key=lambda r: (r["ask.attempt"], r.get("ask.at", 0)), default={})
    attempt_asked = int(latest.get("ask.attempt", 0))
    failure = None
    for _placer, r in sorted(reports.items()):
        if isinstance(r.get("fail.error"), str) and int(r.get("fail.attempt", 0)) >= attempt_asked:
            failure = r["fail.error"]
    vm = reports.get(host, {}) if host else {}
    refusals = sorted(
        (h, r.get("answer.reason", ""))
        for h, r in reports.items()
        if r.get("answer.accepted") is False
    )
    answers = {
        h: {
            "attempt": r.get("answer.attempt"),
            "accepted": r.get("answer.accepted"),
            "free": r.get("answer.free") or {},
            "at": r.get("answer.at"),
        }
        for h, r in reports.items()
        if isinstance(r.get("answer.attempt"), int)
    }
    return {
        "node_id": host,
        "attempt": attempt,
        "answers": answers,
        "attempt_asked": attempt_asked,
        "asked_host": latest.get("ask.host"),
        "placed_by": next((p for p, r in sorted(asks.items()) if r is latest), None),
        "reason": latest.get("ask.reason"),
        "asked_at": latest.get("ask.at"),
        "error": failure if host is None else None,
        "refusals": [{"node_id": h, "reason": why} for h, why in refusals],
        # The VM, as its host reports it: None until the host says so.
        "status": vm.get("vm.status"),
        "pid": vm.get("vm.pid"),
        "accelerator": vm.get("vm.accelerator"),
        "endpoints": vm.get("vm.endpoints") or [],
        "guest_ip": vm.get("vm.guest_ip"),
        "boot_ms": vm.get("vm.boot_ms"),
        "started_at": vm.get("vm.started_at_ms"),
        "detail": vm.get("vm.detail"),
        "status_at": vm.get("vm.at"),
        "rebooted_for": vm.get("vm.rebooted_for"),
    }


def slot_views(
    tables: dict[str, Record], instance_id: str, replicas: int, is_node: Callable[[str], bool]
) -> list[dict[str, Any]]:
    return [
        {"slot": k, **slot_view(tables.get(slot_key(instance_id, k)), is_node)}
        for k in range(replicas)
    ]


def hosts_of(slots: Iterable[dict[str, Any]]) -> list[str]:
    return [s["node_id"] for s in slots if s["node_id"]]


KINDS: Final[list[Kind]] = [
    Kind(
        "placement.request",
        {
            "instance_id": _INSTANCE_ID,
            "slot": _SLOT,
            "host": Addr(required=True),
            "attempt": _ATTEMPT,
            "reason": Str(length_max=256),
        },
        _anyone,
        _report("ask"),
    ),
    Kind(
        "placement.answer",
        {
            "instance_id": _INSTANCE_ID,
            "slot": _SLOT,
            "attempt": _ATTEMPT,
            "accepted": Bool(required=True),
            "free": VM_RESOURCES,
            "reason": Str(length_max=512),
        },
        _answer_shape,
        _report("answer"),
    ),
    Kind(
        "placement.fail",
        {
            "instance_id": _INSTANCE_ID,
            "slot": _SLOT,
            "attempt": Int(value_max=1_000_000, required=True),
            "error": Str(length_max=1024, required=True),
        },
        _anyone,
        _report("fail"),
    ),
    Kind(
        "vm.status",
        {
            "instance_id": _INSTANCE_ID,
            "slot": _SLOT,
            "status": Enum(values=VM_STATUSES, required=True),
            "pid": Int(value_max=1 << 22),
            "accelerator": Str(length_max=16),
            "endpoints": ListOf(item=_ENDPOINT, items_max=64),
            "guest_ip": Str(length_max=64),
            "boot_ms": Int(value_max=1 << 40),
            "started_at_ms": Int(value_max=1 << 50),
            "detail": Str(length_max=1024),
            "rebooted_for": Int(value_max=1 << 50),
        },
        _anyone,
        _report("vm"),
    ),
]
