"""Delta-state CRDT building blocks: LWW register and map, observed-remove set, PN counter.

Theory of operation
-------------------
Each type is a join-semilattice: ``merge`` is commutative, associative and idempotent, so
replicas that have merged the same states in any order, any number of times, hold the same
value. Mutators do not change the receiver directly; they return a **delta**, a small state of
the same type that carries only the change, and the caller merges it (locally, and on every
replica the op reaches). A delta applied twice, late, or out of order is harmless, because
applying a delta *is* merging a state (Almeida, Shoker & Baquero, "Delta State Replicated Data
Types", 2018).

Ordering of concurrent writes uses a ``Stamp`` ``(wall_ms, logical, author, op_id)``: the HLC
first, then the author's address, then the op id, a total order every replica computes alike.
Nothing here knows about signatures or ops; ``node.ledger.state`` feeds verified ops in.

States serialize to plain JSON-able values (``to_json``/``from_json``) for snapshots and the
state hash; stamps are written as ``[wall_ms, logical, author, op_id_hex]``.
"""

from __future__ import annotations

from typing import Any

from node.ledger.op import Stamp

__all__ = ["LWWMap", "LWWRegister", "ORSet", "PNCounter", "stamp_from_json", "stamp_to_json"]


def stamp_to_json(stamp: Stamp) -> list[Any]:
    return [stamp[0], stamp[1], stamp[2], stamp[3].hex()]


def stamp_from_json(value: list[Any]) -> Stamp:
    return (int(value[0]), int(value[1]), str(value[2]), bytes.fromhex(value[3]))


class LWWRegister:
    """Last-writer-wins register: the value with the greatest stamp."""

    __slots__ = ("stamp", "value")

    def __init__(self, stamp: Stamp | None = None, value: Any = None) -> None:
        self.stamp = stamp
        self.value = value

    def set(self, value: Any, stamp: Stamp) -> LWWRegister:
        return LWWRegister(stamp, value)

    def merge(self, other: LWWRegister) -> bool:
        """Join ``other`` into self; True if the value changed."""
        if other.stamp is not None and (self.stamp is None or other.stamp > self.stamp):
            self.stamp, self.value = other.stamp, other.value
            return True
        return False

    def to_json(self) -> Any:
        return None if self.stamp is None else [stamp_to_json(self.stamp), self.value]

    @classmethod
    def from_json(cls, data: Any) -> LWWRegister:
        return cls() if data is None else cls(stamp_from_json(data[0]), data[1])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LWWRegister)
            and self.stamp == other.stamp
            and self.value == other.value
        )

    def __repr__(self) -> str:
        return f"LWWRegister({self.value!r})"


class LWWMap:
    """A map of LWW registers, with LWW removal.

    A removal is a tombstone entry ``(stamp, False, None)``; it must be kept (not dropped) so a
    concurrent older write arriving later cannot resurrect the key. Tombstones are small and
    the maps here hold records' fields, so they are never collected.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        # key -> (stamp, present, value)
        self.entries: dict[str, tuple[Stamp, bool, Any]] = {}

    def set(self, key: str, value: Any, stamp: Stamp) -> LWWMap:
        delta = LWWMap()
        delta.entries[key] = (stamp, True, value)
        return delta

    def remove(self, key: str, stamp: Stamp) -> LWWMap:
        delta = LWWMap()
        delta.entries[key] = (stamp, False, None)
        return delta

    def merge(self, other: LWWMap) -> bool:
        changed = False
        entries = self.entries
        for key, theirs in other.entries.items():
            ours = entries.get(key)
            if ours is None or theirs[0] > ours[0]:
                entries[key] = theirs
                changed = True
        return changed

    def get(self, key: str, default: Any = None) -> Any:
        entry = self.entries.get(key)
        return entry[2] if entry is not None and entry[1] else default

    def stamp_of(self, key: str) -> Stamp | None:
        entry = self.entries.get(key)
        return None if entry is None else entry[0]

    def __contains__(self, key: str) -> bool:
        entry = self.entries.get(key)
        return entry is not None and entry[1]

    def to_dict(self) -> dict[str, Any]:
        return {k: e[2] for k, e in self.entries.items() if e[1]}

    def to_json(self) -> Any:
        return {k: [stamp_to_json(e[0]), e[1], e[2]] for k, e in sorted(self.entries.items())}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LWWMap:
        result = cls()
        for key, (stamp, present, value) in data.items():
            result.entries[key] = (stamp_from_json(stamp), bool(present), value)
        return result

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LWWMap) and self.entries == other.entries

    def __repr__(self) -> str:
        return f"LWWMap({self.to_dict()!r})"


class ORSet:
    """Observed-remove set (add wins over a concurrent remove).

    Each add is tagged with a unique tag (the op id of the add). A remove carries the tags of
    the adds its author had *observed*; an add the remover had not seen survives. An element
    is present while it has a tag that has not been removed.
    """

    __slots__ = ("adds", "removed")

    def __init__(self) -> None:
        self.adds: dict[str, set[bytes]] = {}
        self.removed: set[bytes] = set()

    def add(self, element: str, tag: bytes) -> ORSet:
        delta = ORSet()
        delta.adds[element] = {tag}
        return delta

    def remove(self, element: str) -> ORSet:
        """Delta removing every tag of ``element`` this replica has observed."""
        return self.remove_tags(self.adds.get(element, set()))

    @staticmethod
    def remove_tags(tags: set[bytes]) -> ORSet:
        delta = ORSet()
        delta.removed = set(tags)
        return delta

    def observed_tags(self, element: str) -> set[bytes]:
        return self.adds.get(element, set()) - self.removed

    def merge(self, other: ORSet) -> bool:
        changed = False
        for element, tags in other.adds.items():
            ours = self.adds.setdefault(element, set())
            if not tags <= ours:
                ours |= tags
                changed = True
        if not other.removed <= self.removed:
            self.removed |= other.removed
            changed = True
        return changed

    def __contains__(self, element: str) -> bool:
        tags = self.adds.get(element)
        return tags is not None and not tags <= self.removed

    def value(self) -> set[str]:
        removed = self.removed
        return {e for e, tags in self.adds.items() if not tags <= removed}

    def to_json(self) -> Any:
        return {
            "adds": {e: sorted(t.hex() for t in tags) for e, tags in sorted(self.adds.items())},
            "removed": sorted(t.hex() for t in self.removed),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ORSet:
        result = cls()
        result.adds = {e: {bytes.fromhex(t) for t in tags} for e, tags in data["adds"].items()}
        result.removed = {bytes.fromhex(t) for t in data["removed"]}
        return result

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ORSet) and self.adds == other.adds and self.removed == other.removed
        )

    def __repr__(self) -> str:
        return f"ORSet({sorted(self.value())!r})"


class PNCounter:
    """Positive-negative counter with one slot per writer.

    Each writer only ever raises its own two totals, and merge takes the per-writer maximum,
    so concurrent increments from different writers all count (the defect of the ``crdts``
    package, whose single max-merged pair loses them; see docs/decisions.md). A delta carries
    the writer's new cumulative totals, which is what makes it idempotent. Integers only.

    This counter can go negative under concurrency; spending that must never overdraw needs
    the bounded (escrow) counter planned for the billing ledger.
    """

    __slots__ = ("n", "p")

    def __init__(self) -> None:
        self.p: dict[str, int] = {}
        self.n: dict[str, int] = {}

    def increment(self, writer: str, amount: int) -> PNCounter:
        delta = PNCounter()
        if amount >= 0:
            delta.p[writer] = self.p.get(writer, 0) + amount
        else:
            delta.n[writer] = self.n.get(writer, 0) - amount
        return delta

    def merge(self, other: PNCounter) -> bool:
        changed = False
        for ours, theirs in ((self.p, other.p), (self.n, other.n)):
            for writer, total in theirs.items():
                if total > ours.get(writer, 0):
                    ours[writer] = total
                    changed = True
        return changed

    def value(self) -> int:
        return sum(self.p.values()) - sum(self.n.values())

    def to_json(self) -> Any:
        return {"n": dict(sorted(self.n.items())), "p": dict(sorted(self.p.items()))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PNCounter:
        result = cls()
        result.p = {k: int(v) for k, v in data["p"].items()}
        result.n = {k: int(v) for k, v in data["n"].items()}
        return result

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PNCounter) and self.p == other.p and self.n == other.n

    def __repr__(self) -> str:
        return f"PNCounter({self.value()})"
