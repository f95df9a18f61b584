"""The ``fog`` zone: which A records a name has, computed from a snapshot of replicated state.

Theory of operation
-------------------
The zone is a pure function of what the replica knows: the instances with their slots, the
announced nodes, the vanity names of ``dns.add`` (``node.ledger.names``) and the mesh address of
each subject, read through an injected ``address_of(subject)`` (subjects ``node:<node_id>`` and
``slot:<instance_id>:<slot>``, the mesh view's names). Nothing here opens a socket or reads a
clock: the server (``node.names.server``) builds a fresh ``Zone`` per query batch from the state
under its lock, so an instance that stops stops being answered within one TTL.

Names (case-insensitive, with or without the final dot):

- ``<build>.fog``: A records of the build's **running** slots only (slot status ``Started``)
  at their mesh addresses. A build id is 64 hex digits, one more than a DNS label holds (63),
  so the label is a *prefix* of the id: any 12 to 63 hex digits that match exactly one build of
  a known instance; ``build_label`` gives the canonical 32-digit one.
- ``<instance_id>.instance.fog``: slot 0's address; ``<k>.<instance_id>.instance.fog``: slot
  k's. Answered while the slot is Started (a stopped VM's address answers nothing).
- ``<node_id without 0x, lower hex>.node.fog``: the node's mesh address.
- vanity names (``dns.add``): as ``<build>.fog`` for the build they name.

TTLs are short where state moves: ``INSTANCE_TTL_S`` (5 s) for builds, instances and vanity
names, ``NODE_TTL_S`` (60 s) for nodes. A name in the zone that has no record is NXDOMAIN with
the zone's SOA in the authority section (its minimum, ``NEGATIVE_TTL_S``, caps negative
caching); a known name asked for another type than A is NOERROR with no answer and the SOA
(NODATA). A name outside ``fog`` is REFUSED: this server is authoritative only.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "INSTANCE_TTL_S",
    "NEGATIVE_TTL_S",
    "NODE_TTL_S",
    "ZONE",
    "Answer",
    "Soa",
    "Zone",
    "build_label",
    "normalize",
]

ZONE: Final = "fog"
INSTANCE_TTL_S: Final = 5
NODE_TTL_S: Final = 60
NEGATIVE_TTL_S: Final = 5
BUILD_PREFIX_DIGITS_MIN: Final = 12
_BUILD_LABEL_DIGITS: Final = 32
_HEX = re.compile(r"[0-9a-f]+")
_RUNNING: Final = "Started"


@dataclass(frozen=True)
class Soa:
    """The zone's SOA (RFC 1035 3.3.13); serial is the replica's op count (it grows)."""

    mname: str = "ns.fog"
    rname: str = "hostmaster.fog"
    serial: int = 1
    refresh_s: int = 60
    retry_s: int = 30
    expire_s: int = 3600
    minimum_s: int = NEGATIVE_TTL_S


@dataclass(frozen=True)
class Answer:
    """What a query gets: a response code, A records ``(name, ttl_s, address)``, and the SOA
    for the authority section (negative answers) or None."""

    rcode: str  # "NOERROR", "NXDOMAIN" or "REFUSED"
    records: tuple[tuple[str, int, str], ...] = ()
    soa: Soa | None = None


def normalize(qname: str) -> str:
    """A query name as the zone compares it: lower case, no final dot."""
    return qname.lower().rstrip(".")


def build_label(build_id: str) -> str:
    """The canonical DNS label of a build: the first 32 hex digits of its id."""
    return build_id.lower()[:_BUILD_LABEL_DIGITS]


class Zone:
    """The ``fog`` zone of one state snapshot. ``instances`` are ``State.instances()`` dicts
    (``instance_id``, ``build_id``, ``slots`` with ``slot`` and ``status``); ``node_ids`` the
    announced nodes; ``names`` the vanity names (``names_of``)."""

    def __init__(
        self,
        instances: Iterable[Mapping[str, Any]],
        node_ids: Iterable[str],
        names: Mapping[str, str],
        address_of: Callable[[str], str | None],
        soa: Soa = Soa(),
    ) -> None:
        self.soa = soa
        self._address_of = address_of
        # instance id -> {slot: running?}; build id -> [(instance id, slot)] running.
        self._slots: dict[str, dict[int, bool]] = {}
        self._running: dict[str, list[tuple[str, int]]] = {}
        for instance in instances:
            iid = str(instance["instance_id"]).lower()
            bid = str(instance.get("build_id") or "").lower()
            slots = self._slots.setdefault(iid, {})
            for slot in instance.get("slots") or []:
                k = int(slot["slot"])
                running = slot.get("status") == _RUNNING
                slots[k] = running
                if running and bid:
                    self._running.setdefault(bid, []).append((iid, k))
            if bid:
                self._running.setdefault(bid, [])
        self._build_ids = sorted(self._running)
        self._nodes = {n.lower().removeprefix("0x"): n for n in node_ids}
        # Vanity names are stored as the part before ".fog" (``dns.add`` may give either).
        self._names = {normalize(d).removesuffix("." + ZONE): b.lower() for d, b in names.items()}

    @classmethod
    def from_state(cls, state: Any, address_of: Callable[[str], str | None]) -> Zone:
        """The zone of a ``node.ledger.state.State`` (call it under the replica's lock)."""
        from node.ledger.names import names_of

        return cls(
            state.instances(),
            [n["node_id"] for n in state.nodes()],
            names_of(state),
            address_of,
            Soa(serial=max(1, int(state.op_count) % 2**32)),
        )

    def answer(self, qname: str, qtype: str) -> Answer:
        name = normalize(qname)
        if name != ZONE and not name.endswith("." + ZONE):
            return Answer("REFUSED")
        if name == ZONE:
            return Answer("NOERROR", soa=self.soa)  # the apex exists; it has no A record
        found = self._lookup(name[: -len(ZONE) - 1])
        if found is None:
            return Answer("NXDOMAIN", soa=self.soa)
        ttl_s, subjects = found
        if qtype.upper() not in ("A", "ANY"):
            return Answer("NOERROR", soa=self.soa)
        records = []
        for subject in subjects:
            address = self._address_of(subject)
            if address is not None:
                records.append((name + ".", ttl_s, address))
        return Answer("NOERROR", tuple(records), None if records else self.soa)

    def _lookup(self, rest: str) -> tuple[int, list[str]] | None:
        """``rest`` is the name without ``.fog``: (ttl, the subjects whose addresses answer),
        or None when the name does not exist."""
        labels = rest.split(".")
        if labels[-1] == "node" and len(labels) == 2:
            node = self._nodes.get(labels[0])
            return None if node is None else (NODE_TTL_S, [f"node:{node}"])
        if labels[-1] == "instance" and len(labels) in (2, 3):
            iid = labels[-2]
            slots = self._slots.get(iid)
            if slots is None:
                return None
            k = 0
            if len(labels) == 3:
                if not labels[0].isdigit():
                    return None
                k = int(labels[0])
            if k not in slots:
                return None
            return INSTANCE_TTL_S, [f"slot:{iid}:{k}"] if slots[k] else []
        if rest in self._names:
            return INSTANCE_TTL_S, self._build_subjects(self._names[rest])
        if len(labels) == 1:
            bid = self._build_of_prefix(rest)
            if bid is not None:
                return INSTANCE_TTL_S, self._build_subjects(bid)
        return None

    def _build_subjects(self, build_id: str) -> list[str]:
        return [f"slot:{iid}:{k}" for iid, k in self._running.get(build_id, [])]

    def _build_of_prefix(self, prefix: str) -> str | None:
        if len(prefix) < BUILD_PREFIX_DIGITS_MIN or not _HEX.fullmatch(prefix):
            return None
        i = bisect.bisect_left(self._build_ids, prefix)
        hits = [b for b in self._build_ids[i : i + 2] if b.startswith(prefix)]
        # Two builds sharing the prefix: ambiguous, so the name does not exist (ask longer).
        return hits[0] if len(hits) == 1 else None
