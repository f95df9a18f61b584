"""The replicated domain state: accounts, nodes, instances, agents and models.

Theory of operation
-------------------
Rule 1: **state is a pure function of the set of ops applied.** Each op is turned into a
delta of the CRDTs in ``node.ledger.crdt`` and merged, so any replica that has applied the same
set of ops, in any order and with any duplicates, holds identical state (``state_hash``).

Rule 2: **authorization is a pure function of the op.** Whether an author may do something
never depends on what a replica has already seen, because every entity's key is *derived from
its owner* (the derivations are in ``node.ledger.kinds``).

An op only ever names ``(its author, name)``, so an author can only reach its own entities.
Ops may also carry the target id (the gateway fills it in); a replica recomputes it from the
author and refuses the op as ``unauthorized`` if it differs. Thus a forged "stop someone
else's instance" is refused by every replica, whatever it has seen, with the same reason; an
update that arrives before its create is simply merged early (LWW fields commute), and there
is nothing to park or re-check later.

Node ops follow the same rule (a node reports only its own capacity). Ops in which a node
touches an instance (``instance.claim``, ``instance.status``) are recorded per node; which
node's report counts is computed when reading (the claimant with the earliest claim stamp),
so it too is order-independent. Placement that assigns hosts comes with a later issue.

Rule 3: **nothing in a payload is trusted beyond its schema.** There is no admin flag and no
credit balance a user can write: the schemas in ``KINDS`` list every field an op may set.

Where things are: ``node.ledger.record`` (``Record``, one entity's CRDTs, and ``Kind``),
``node.ledger.kinds`` (today's kinds: schema, authorizer, applier each), this module (the
registry of kinds, the tables, merging, snapshots and reads).

``check_op`` validates; ``apply`` merges an op that was verified (``decode_op``) and checked.
``ingest`` does all three for ops from outside. Reads (``account()``, ``instances()``...)
return plain JSON-able dicts in the upstream field names where there is one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Final

from node.identity.keys import keccak256
from node.ledger import billing as _billing
from node.ledger import builds as _builds
from node.ledger import kinds as _entities
from node.ledger import mesh as _mesh
from node.ledger import names as _names
from node.ledger import placement as _placement
from node.ledger.canonical import dumps_canonical
from node.ledger.digest import OpDigest
from node.ledger.kinds import INSTANCE_STATUSES, build_id_of, grant_key_of, instance_id_of
from node.ledger.op import Op, OpRejected, decode_op
from node.ledger.record import Kind, Record
from node.ledger.schema import check_payload

__all__ = [
    "INSTANCE_STATUSES",
    "KINDS",
    "SNAPSHOT_FORMAT",
    "State",
    "build_id_of",
    "grant_key_of",
    "instance_id_of",
]

SNAPSHOT_FORMAT: Final = 1

# Every kind the state knows, from every concern's module; a kind's name is unique.
_KIND_LIST: Final = [
    *_entities.KINDS,
    *_builds.KINDS,
    *_placement.KINDS,
    *_mesh.KINDS,
    *_names.KINDS,
    *_billing.KINDS,
]
KINDS: Final[dict[str, Kind]] = {k.name: k for k in _KIND_LIST}
assert len(KINDS) == len(_KIND_LIST), "two modules define the same op kind"
_TABLES: Final = (
    *_entities.TABLES,
    *_builds.TABLES,
    *_placement.TABLES,
    *_mesh.TABLES,
    *_names.TABLES,
    *_billing.TABLES,
)


class State:
    """The materialized replicated state of one network."""

    def __init__(self, network: str) -> None:
        self.network = network
        self.tables: dict[str, dict[str, Record]] = {t: {} for t in _TABLES}
        self.owners: dict[str, str] = {}  # entity id -> owner address (derived ids only)
        # id -> wall_ms of every op applied, and the digest gossip compares (node.ledger.digest).
        self.applied: dict[bytes, int] = {}
        self.digest = OpDigest()
        self.op_count = 0
        # The greatest HLC among applied ops: a restarted replica's clock starts past it.
        self.clock_max: tuple[int, int] = (0, 0)

    # -- writing -------------------------------------------------------------------------------

    @staticmethod
    def check_op(op: Op) -> dict[str, Any]:
        """Validate kind, payload and authorization of a verified op. Stateless."""
        kind = KINDS.get(op.kind)
        if kind is None:
            raise OpRejected(
                "unknown_kind",
                f"unknown op kind {op.kind!r}; known kinds: {', '.join(sorted(KINDS))}",
            )
        payload = check_payload(op.kind, kind.spec, op.payload)
        kind.authorize(op, payload)
        return payload

    def apply(self, op: Op, payload: dict[str, Any] | None = None) -> bool:
        """Merge a verified, checked op. Returns False if it was already applied."""
        if op.id in self.applied:
            return False
        if payload is None:
            payload = self.check_op(op)
        KINDS[op.kind].apply(self, op, payload)
        self.applied[op.id] = op.wall_ms
        self.digest.add(op.id, op.wall_ms)
        self.op_count += 1
        if (op.wall_ms, op.logical) > self.clock_max:
            self.clock_max = (op.wall_ms, op.logical)
        return True

    def ingest(self, body: bytes, sig: bytes) -> tuple[Op, bool]:
        """Verify, check and apply an op from outside. Raises ``OpRejected``, changing nothing."""
        op = decode_op(body, sig, self.network)
        return op, self.apply(op, self.check_op(op))

    def record(self, table: str, key: str, owner: str | None = None) -> Record:
        """The record of ``key`` in ``table``, created if missing (what appliers merge into)."""
        records = self.tables[table]
        record = records.get(key)
        if record is None:
            record = records[key] = Record()
        if owner is not None:
            # A node's report can create the record first; the owner is learned from the
            # first owner op (ids derive from owners, so it never changes).
            self.owners[key] = owner
        return record

    def merge(self, other: State) -> None:
        """State-based join with another replica's state (same network)."""
        if other.network != self.network:
            raise ValueError(
                f"cannot merge state of network {other.network!r} into {self.network!r}"
            )
        for table, records in other.tables.items():
            ours = self.tables[table]
            for key, record in records.items():
                mine = ours.get(key)
                if mine is None:
                    mine = ours[key] = Record()
                mine.merge(record)
        self.owners.update(other.owners)
        for op_id in other.applied.keys() - self.applied.keys():
            wall_ms = other.applied[op_id]
            self.applied[op_id] = wall_ms
            self.digest.add(op_id, wall_ms)
            self.op_count += 1
        self.clock_max = max(self.clock_max, other.clock_max)

    # -- snapshots and hashing -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "network": self.network,
            "tables": {
                t: {k: r.to_json() for k, r in sorted(records.items())}
                for t, records in sorted(self.tables.items())
            },
            "owners": dict(sorted(self.owners.items())),
        }

    def state_hash(self) -> str:
        """Hex digest of the whole CRDT state: equal on replicas that applied the same ops."""
        # The op depth limit is not the state's: a record nests reports in tables in the state.
        # Every value in it came from a verified op, so the encoding alone is enough.
        return keccak256(dumps_canonical(self.to_json())).hex()

    def snapshot(self) -> bytes:
        """Canonical bytes of the state plus the ids applied (the store compresses them)."""
        data = self.to_json()
        data["applied"] = sorted([i.hex(), w] for i, w in self.applied.items())
        data["clock_max"] = list(self.clock_max)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_snapshot(cls, blob: bytes) -> State:
        data = json.loads(blob)
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(
                f"snapshot format {data.get('format')!r} is not {SNAPSHOT_FORMAT}; "
                "rebuild the state from the op log"
            )
        state = cls(data["network"])
        for table, records in data["tables"].items():
            state.tables[table] = {k: Record.from_json(r) for k, r in records.items()}
        state.owners = dict(data["owners"])
        state.applied = {bytes.fromhex(i): int(w) for i, w in data["applied"]}
        state.digest = OpDigest.from_items(state.applied.items())
        state.op_count = len(state.applied)
        wall_ms, logical = data["clock_max"]
        state.clock_max = (int(wall_ms), int(logical))
        return state

    # -- reading -------------------------------------------------------------------------------

    def _live(self, table: str) -> Iterator[tuple[str, Record]]:
        for key, record in self.tables[table].items():
            if record.exists:
                yield key, record

    @staticmethod
    def _times(record: Record) -> dict[str, Any]:
        created = record.firsts.get("created")
        return {"created_at": created[0] if created else None, "updated_at": record.updated_ms()}

    def _owned(self, table: str, owner: str) -> list[str]:
        return sorted(key for key, record in self._live(table) if self.owners.get(key) == owner)

    def account(self, address: str) -> dict[str, Any] | None:
        record = self.tables["accounts"].get(address)
        if record is None or not record.exists:
            return None
        fields = record.live_fields()
        return {
            "address": address,
            "name": fields.get("name"),
            "description": fields.get("description"),
            "owned_instances": self._owned("instances", address),
            "owned_agents": self._owned("agents", address),
            "owned_models": self._owned("models", address),
            **self._times(record),
        }

    def accounts(self) -> list[dict[str, Any]]:
        return [a for key, _ in sorted(self._live("accounts")) if (a := self.account(key))]

    def node(self, node_id: str) -> dict[str, Any] | None:
        record = self.tables["nodes"].get(node_id)
        if record is None or not record.exists:
            return None
        fields = record.fields.to_dict()
        fields.pop("exists", None)
        return {"node_id": node_id, **fields, **self._times(record)}

    def nodes(self) -> list[dict[str, Any]]:
        return [n for key, _ in sorted(self._live("nodes")) if (n := self.node(key))]

    def instance(self, instance_id: str) -> dict[str, Any] | None:
        record = self.tables["instances"].get(instance_id)
        if record is None or not record.exists:
            return None
        fields = record.live_fields()
        owner = self.owners[instance_id]
        claims = {k[6:]: s for k, s in record.firsts.items() if k.startswith("claim:")}
        host = min(claims, key=claims.__getitem__) if claims else None
        report = record.reports[host].to_dict() if host in record.reports else {}
        replicas = int(fields.get("replicas", 1)) if "build_id" in fields else 0
        slots = _placement.slot_views(
            self.tables["placements"], instance_id, replicas, self._is_node
        )
        first = slots[0] if slots else {}
        return {
            "instance_id": instance_id,
            # A shipped instance boots a pack build; a recorded one keeps the upstream id.
            "build_id": fields.get("build_id") or build_id_of(owner, fields["name"]),
            "instance_owner": owner,
            "name": fields["name"],
            "node_id": first.get("node_id") or host,
            # None until the host node reports: nothing runs until a node says so.
            "status": first.get("status") or report.get("status"),
            "formnet_ip": report.get("formnet_ip"),
            "pid": first.get("pid"),
            "accelerator": first.get("accelerator"),
            "endpoints": first.get("endpoints", []),
            "error": first.get("error"),
            "desired_state": fields.get("desired_state", "running"),
            # When the owner last asked for a state: a Killed VM boots again on a newer ask.
            "desired_at": (record.fields.stamp_of("desired_state") or (None,))[0],
            "reboot_at": fields.get("reboot_at"),
            "replicas": replicas,
            "via": fields.get("via"),
            "slots": slots,
            "formfile": fields.get("formfile"),
            "description": fields.get("description"),
            "resources": fields.get("resources", {}),
            **self._times(record),
        }

    def instances(self, owner: str | None = None) -> list[dict[str, Any]]:
        return [
            i
            for key, _ in sorted(self._live("instances"))
            if (owner is None or self.owners.get(key) == owner) and (i := self.instance(key))
        ]

    def instances_by_build(self, build_id: str) -> list[dict[str, Any]]:
        return [i for i in self.instances() if i["build_id"] == build_id]

    def build(self, build_id: str) -> dict[str, Any] | None:
        """A build request and the report that counts (``node.ledger.builds.build_view``)."""
        record = self.tables["builds"].get(build_id)
        if record is None or not record.exists:
            return None
        return _builds.build_view(build_id, record, self.owners[build_id], self._is_node)

    def builds(self, owner: str | None = None) -> list[dict[str, Any]]:
        return [
            b
            for key, _ in sorted(self._live("builds"))
            if (owner is None or self.owners.get(key) == owner) and (b := self.build(key))
        ]

    def _is_node(self, address: str) -> bool:
        record = self.tables["nodes"].get(address)
        return record is not None and record.exists

    def _listing(self, table: str, key: str, id_field: str) -> dict[str, Any] | None:
        record = self.tables[table].get(key)
        if record is None or not record.exists:
            return None
        fields = record.live_fields()
        allow = record.sets.get("allow")
        return {
            id_field: key,
            "owner_id": self.owners[key],
            **fields,
            "access": fields.get("access", "public"),
            "allow_list": sorted(allow.value()) if allow else [],
            **self._times(record),
        }

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        return self._listing("agents", agent_id, "agent_id")

    def agents(self) -> list[dict[str, Any]]:
        return [a for key, _ in sorted(self._live("agents")) if (a := self.agent(key))]

    def model(self, model_id: str) -> dict[str, Any] | None:
        return self._listing("models", model_id, "model_id")

    def models(self) -> list[dict[str, Any]]:
        return [m for key, _ in sorted(self._live("models")) if (m := self.model(key))]

    def grant(self, account: str, delegate: str) -> dict[str, Any] | None:
        """``account``'s grant to ``delegate`` as last written (revoked or not), or None."""
        record = self.tables["keys"].get(grant_key_of(account, delegate))
        if record is None or not record.exists:
            return None
        fields = record.fields.to_dict()
        fields.pop("exists", None)
        return {"account": account, **fields, **self._times(record)}

    def grants(self, account: str) -> list[dict[str, Any]]:
        prefix = f"{account}/"
        return [
            g
            for key, _ in sorted(self._live("keys"))
            if key.startswith(prefix) and (g := self.grant(account, key[len(prefix) :]))
        ]

    def grants_to(self, delegate: str) -> list[dict[str, Any]]:
        """Unrevoked grants naming ``delegate`` (expiry is the caller's to check: it needs now)."""
        suffix = f"/{delegate}"
        return [
            g
            for key, _ in sorted(self._live("keys"))
            if key.endswith(suffix)
            and (g := self.grant(key[: -len(suffix)], delegate))
            and not g["revoked"]
        ]

    def allow_tags(self, table: str, entity_id: str, address: str | None) -> list[str]:
        """Tags a ``*.disallow`` op must carry to remove ``address`` (what this replica saw),
        or, with ``address=None``, the whole allow-list (for a ``*.delete``)."""
        record = self.tables[table].get(entity_id)
        allow = record.sets.get("allow") if record else None
        if allow is None:
            return []
        addresses = allow.value() if address is None else {address}
        return sorted(t.hex() for a in addresses for t in allow.observed_tags(a))


def apply_all(state: State, ops: Iterable[Op]) -> int:
    """Apply already-verified ops; returns how many were new."""
    return sum(state.apply(op) for op in ops)
