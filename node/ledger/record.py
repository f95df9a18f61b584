"""What one entity of the replicated state is made of, and what an op kind is.

``Record`` is the CRDT of one entity (an account, a node, an instance, a listing, a grant...):
a few CRDTs from ``node.ledger.crdt`` side by side, merged field by field, so two replicas that
applied the same ops hold equal records whatever the order. ``Kind`` ties an op kind to its
payload schema, its authorization rule and its applier. The kinds themselves live with their
concern (``node.ledger.kinds`` for today's entities; billing, placement, the mesh and names
add modules of their own), and ``node.ledger.state`` gathers them.

An applier changes the state only through ``Tables.record`` (the record, created if missing),
so a kind module never needs the ``State`` class and no import cycle forms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from node.ledger.crdt import LWWMap, ORSet, stamp_from_json, stamp_to_json
from node.ledger.op import Op, Stamp
from node.ledger.schema import Spec

__all__ = ["Applier", "Authorizer", "Kind", "Record", "Tables"]


class Record:
    """One entity's CRDT state.

    ``fields``: LWW map of the entity's attributes (``exists`` among them: create sets it,
    delete clears it, the later stamp wins). ``firsts``: min-registers (the earliest stamp
    wins) such as ``created`` and per-node ``claim:<address>``. ``sets``: OR-sets such as an
    agent's allow-list. ``reports``: per-node LWW maps (what each node says about the entity).
    """

    __slots__ = ("fields", "firsts", "reports", "sets")

    def __init__(self) -> None:
        self.fields = LWWMap()
        self.firsts: dict[str, Stamp] = {}
        self.sets: dict[str, ORSet] = {}
        self.reports: dict[str, LWWMap] = {}

    def set_report(self, node: str, values: dict[str, Any], stamp: Stamp) -> None:
        """Merge ``values`` into what ``node`` says of the entity (its own LWW map)."""
        report = self.reports.setdefault(node, LWWMap())
        for key, value in values.items():
            report.merge(report.set(key, value, stamp))

    def set_fields(self, values: dict[str, Any], stamp: Stamp) -> None:
        entries = self.fields.entries
        for key, value in values.items():
            ours = entries.get(key)
            if ours is None or stamp > ours[0]:
                entries[key] = (stamp, True, value)

    def first(self, key: str, stamp: Stamp) -> None:
        ours = self.firsts.get(key)
        if ours is None or stamp < ours:
            self.firsts[key] = stamp

    def merge(self, other: Record) -> None:
        self.fields.merge(other.fields)
        for key, stamp in other.firsts.items():
            self.first(key, stamp)
        for name, orset in other.sets.items():
            self.sets.setdefault(name, ORSet()).merge(orset)
        for node, report in other.reports.items():
            self.reports.setdefault(node, LWWMap()).merge(report)

    @property
    def exists(self) -> bool:
        return bool(self.fields.get("exists", False))

    def live_fields(self) -> dict[str, Any]:
        """Fields written after the entity's last delete: a re-created entity starts afresh,
        whatever order the ops arrived in (the delete's stamp is the cut)."""
        cut = self.fields.stamp_of("deleted")
        return {
            key: value
            for key, (stamp, present, value) in self.fields.entries.items()
            if present and key not in ("deleted", "exists") and (cut is None or stamp > cut)
        }

    def updated_ms(self) -> int:
        return max((e[0][0] for e in self.fields.entries.values()), default=0)

    def to_json(self) -> Any:
        return {
            "fields": self.fields.to_json(),
            "firsts": {k: stamp_to_json(s) for k, s in sorted(self.firsts.items())},
            "sets": {k: s.to_json() for k, s in sorted(self.sets.items())},
            "reports": {k: r.to_json() for k, r in sorted(self.reports.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> Record:
        record = cls()
        record.fields = LWWMap.from_json(data["fields"])
        record.firsts = {k: stamp_from_json(s) for k, s in data["firsts"].items()}
        record.sets = {k: ORSet.from_json(s) for k, s in data["sets"].items()}
        record.reports = {k: LWWMap.from_json(r) for k, r in data["reports"].items()}
        return record


class Tables(Protocol):
    """The one thing an applier may do to the state: get a record to merge into."""

    def record(self, table: str, key: str, owner: str | None = None) -> Record: ...


Authorizer = Callable[[Op, dict[str, Any]], None]
Applier = Callable[[Tables, Op, dict[str, Any]], None]


@dataclass(frozen=True)
class Kind:
    """An op kind: its payload schema, who may sign it, and how it changes the state."""

    name: str
    spec: Spec
    authorize: Authorizer
    apply: Applier
