"""The replicated domain state: accounts, nodes, instances, agents and models.

Theory of operation
-------------------
Rule 1: **state is a pure function of the set of ops applied.** Each op is turned into a
delta of the CRDTs in ``node.ledger.crdt`` and merged, so any replica that has applied the same
set of ops, in any order and with any duplicates, holds identical state (``state_hash``).

Rule 2: **authorization is a pure function of the op.** Whether an author may do something
never depends on what a replica has already seen, because every entity's key is *derived from
its owner*:

* an account's key is its address, a node's key is the node's address;
* an instance, agent or model is named by its owner's address and a per-owner ``name``:
  ``build_id = sha3_256(owner ‖ name)`` (the upstream formula), ``agent_id = model_id =
  build_id``, ``instance_id = sha3_256(build_id ‖ replica 0)[:20]``.

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

``check_op`` validates; ``apply`` merges an op that was verified (``decode_op``) and checked.
``ingest`` does all three for ops from outside. Reads (``account()``, ``instances()``...)
return plain JSON-able dicts in the upstream field names where there is one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

from node.identity.keys import keccak256
from node.ledger.crdt import LWWMap, ORSet, stamp_from_json, stamp_to_json
from node.ledger.digest import OpDigest
from node.ledger.op import Op, OpRejected, Stamp, canonical_json, decode_op
from node.ledger.request_op import DELEGABLE_SCOPES
from node.ledger.schema import (
    Addr,
    Bool,
    Enum,
    Field,
    Int,
    ListOf,
    Obj,
    Spec,
    Str,
    StrMap,
    check_payload,
)

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

# The upstream InstanceStatus values (form-state instances.rs), spelled as serde writes them.
INSTANCE_STATUSES: Final = (
    "Building",
    "Built",
    "Created",
    "Started",
    "Stopped",
    "Killed",
    "CriticalError",
)

# Entity names end up in build ids and, later, DNS labels: keep them DNS-friendly.
_NAME = Str(
    required=True,
    length_min=1,
    length_max=63,
    pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
)
_TEXT = Str(length_max=4096)
_LABEL = Str(length_max=128)
# Allow-list add tags (op ids) that a disallow or delete removes.
_TAGS = ListOf(item=Str(length_min=64, length_max=64, pattern=r"[0-9a-f]+"), items_max=4096)
_HEX_ID = Str(length_min=40, length_max=64, pattern=r"[0-9a-f]+", hint="lower-case hex id")
_FORMFILE_BYTES_MAX: Final = 64 * 1024

_RESOURCES = Obj(
    spec={
        "vcpus": Int(value_min=1, value_max=256),
        "memory_mb": Int(value_min=64, value_max=4 * 1024 * 1024),
        "disk_gb": Int(value_min=1, value_max=64 * 1024),
        "gpu_count": Int(value_max=64),
    }
)
_REQUIREMENTS = Obj(
    spec={
        "min_vcpus": Int(value_max=256),
        "recommended_vcpus": Int(value_max=256),
        "min_memory_mb": Int(value_max=4 * 1024 * 1024),
        "recommended_memory_mb": Int(value_max=4 * 1024 * 1024),
        "min_disk_gb": Int(value_max=64 * 1024),
        "recommended_disk_gb": Int(value_max=64 * 1024),
        "requires_gpu": Bool(),
        "min_vram_gb": Int(value_max=4096),
    }
)
# Prices are integers in credits (or milli-credits where named so): no floats in ops.
_PRICING = Obj(
    spec={
        "price_per_request": Int(),
        "price_per_1m_tokens": Int(),
        "cost_per_call": Int(),
        "cost_per_1k_input_tokens_milli": Int(),
        "cost_per_1k_output_tokens_milli": Int(),
        "cost_per_minute": Int(),
    }
)
_ENDPOINT = Obj(
    spec={
        "host": Str(length_max=253, required=True),
        "port": Int(value_min=1, value_max=65535, required=True),
        "path": Str(length_max=256, pattern=r"/[^\s]*", hint="an absolute path such as /run"),
    }
)
_CAPACITY = Obj(
    spec={
        "cpu_total_cores": Int(value_max=65536, required=True),
        "cpu_available_millicores": Int(value_max=65536 * 1000, required=True),
        "memory_total_bytes": Int(required=True),
        "memory_available_bytes": Int(required=True),
        "storage_total_bytes": Int(required=True),
        "storage_available_bytes": Int(required=True),
        "gpu_total_memory_bytes": Int(),
        "gpu_available_memory_bytes": Int(),
    }
)

_AGENT_FIELDS: dict[str, Field] = {
    "description": _TEXT,
    "version": _LABEL,
    "agent_type": _LABEL,
    "framework": _LABEL,
    "runtime": _LABEL,
    "license": _LABEL,
    "documentation": _TEXT,
    "tags": ListOf(item=_LABEL, items_max=32),
    "capabilities": ListOf(item=_LABEL, items_max=64),
    "pricing": _PRICING,
    "resource_requirements": _REQUIREMENTS,
    "access": Enum(values=("public", "private")),
    "endpoint": _ENDPOINT,
    "metadata": StrMap(),
}
_MODEL_FIELDS: dict[str, Field] = {
    "description": _TEXT,
    "version": _LABEL,
    "model_type": _LABEL,
    "framework": _LABEL,
    "license": _LABEL,
    "documentation": _TEXT,
    "parameters": Int(),
    "quantization": _LABEL,
    "context_length": Int(value_max=2**32),
    "io_modes": ListOf(item=_LABEL, items_max=16),
    "tags": ListOf(item=_LABEL, items_max=32),
    "pricing": _PRICING,
    "resource_requirements": _REQUIREMENTS,
    "access": Enum(values=("public", "private")),
    "weights_checksum": Str(length_max=128),
    "weights_size_bytes": Int(),
    "metadata": StrMap(),
}


def build_id_of(owner: str, name: str) -> str:
    """Upstream build id: hex SHA3-256 of the 20 address bytes followed by the name."""
    return hashlib.sha3_256(bytes.fromhex(owner[2:]) + name.encode()).hexdigest()


def instance_id_of(owner: str, name: str, replica: int = 0) -> str:
    """Instance id: 20 bytes of SHA3-256(build_id ‖ replica index), hex (40 digits)."""
    digest = hashlib.sha3_256(bytes.fromhex(build_id_of(owner, name)) + replica.to_bytes(4, "big"))
    return digest.hexdigest()[:40]


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


_TABLES: Final = ("accounts", "nodes", "instances", "agents", "models", "keys")


Authorizer = Callable[[Op, dict[str, Any]], None]
Applier = Callable[["State", Op, dict[str, Any]], None]


@dataclass(frozen=True)
class Kind:
    """An op kind: its payload schema and how it changes the state."""

    name: str
    spec: Spec
    authorize: Authorizer
    apply: Applier


def _unauthorized(message: str) -> OpRejected:
    return OpRejected("unauthorized", message)


def _own_account(op: Op, payload: dict[str, Any]) -> None:
    if "address" in payload and payload["address"] != op.author:
        raise _unauthorized(
            f"{op.kind}: only the key of account {payload['address']} can change it; "
            f"this op is signed by {op.author}"
        )


def _own_node(op: Op, payload: dict[str, Any]) -> None:
    if "node_id" in payload and payload["node_id"] != op.author:
        raise _unauthorized(
            f"{op.kind}: only node {payload['node_id']}'s own key reports for it; "
            f"this op is signed by {op.author}"
        )


def _owned_entity(id_of: Callable[[str, str], str], noun: str) -> Authorizer:
    def authorize(op: Op, payload: dict[str, Any]) -> None:
        if "id" in payload and payload["id"] != id_of(op.author, payload["name"]):
            raise _unauthorized(
                f"{op.kind}: {noun} {payload['id']} is not {op.author}'s {noun} {payload['name']!r};"
                f" only its owner can change it"
            )

    return authorize


def _anyone(op: Op, payload: dict[str, Any]) -> None:
    return None


# -- appliers ---------------------------------------------------------------------------------


def _account_upsert(state: State, op: Op, payload: dict[str, Any]) -> None:
    record = state._record("accounts", op.author)
    values = {k: v for k, v in payload.items() if k != "address"}
    if op.kind == "account.create":
        values["exists"] = True
        record.first("created", op.stamp)
    record.set_fields(values, op.stamp)


def _account_delete(state: State, op: Op, payload: dict[str, Any]) -> None:
    state._record("accounts", op.author).set_fields({"exists": False, "deleted": True}, op.stamp)


def _node_announce(state: State, op: Op, payload: dict[str, Any]) -> None:
    record = state._record("nodes", op.author)
    values = {k: v for k, v in payload.items() if k != "node_id"}
    values["exists"] = True
    record.first("created", op.stamp)
    record.set_fields(values, op.stamp)


def _node_capacity(state: State, op: Op, payload: dict[str, Any]) -> None:
    record = state._record("nodes", op.author)
    record.set_fields({"capacity": payload["capacity"], "last_heartbeat": op.wall_ms}, op.stamp)


def _node_leave(state: State, op: Op, payload: dict[str, Any]) -> None:
    state._record("nodes", op.author).set_fields({"exists": False}, op.stamp)


def _entity_upsert(table: str, id_of: Callable[[str, str], str]) -> Applier:
    def apply(state: State, op: Op, payload: dict[str, Any]) -> None:
        key = id_of(op.author, payload["name"])
        record = state._record(table, key, owner=op.author)
        values = {k: v for k, v in payload.items() if k != "id"}
        if op.kind.endswith((".create", ".register")):
            values["exists"] = True
            record.first("created", op.stamp)
        record.set_fields(values, op.stamp)

    return apply


def _entity_delete(table: str, id_of: Callable[[str, str], str]) -> Applier:
    def apply(state: State, op: Op, payload: dict[str, Any]) -> None:
        key = id_of(op.author, payload["name"])
        record = state._record(table, key, owner=op.author)
        record.set_fields({"exists": False, "deleted": True}, op.stamp)
        if payload.get("tags"):
            # The allow-list entries the deleting gateway saw go with it (observed-remove, as
            # for disallow): a re-created private entity does not inherit its old allow-list.
            allow_list = record.sets.setdefault("allow", ORSet())
            allow_list.merge(ORSet.remove_tags({bytes.fromhex(t) for t in payload["tags"]}))

    return apply


def _instance_desired(desired: str) -> Applier:
    def apply(state: State, op: Op, payload: dict[str, Any]) -> None:
        key = instance_id_of(op.author, payload["name"])
        state._record("instances", key, owner=op.author).set_fields(
            {"desired_state": desired}, op.stamp
        )

    return apply


def _instance_claim(state: State, op: Op, payload: dict[str, Any]) -> None:
    state._record("instances", payload["instance_id"]).first(f"claim:{op.author}", op.stamp)


def _instance_status(state: State, op: Op, payload: dict[str, Any]) -> None:
    record = state._record("instances", payload["instance_id"])
    report = record.reports.setdefault(op.author, LWWMap())
    for key, value in payload.items():
        if key != "instance_id":
            report.merge(report.set(key, value, op.stamp))


def _allow(table: str, allow: bool) -> Applier:
    def apply(state: State, op: Op, payload: dict[str, Any]) -> None:
        key = build_id_of(op.author, payload["name"])
        allow_list = state._record(table, key, owner=op.author).sets.setdefault("allow", ORSet())
        if allow:
            allow_list.merge(allow_list.add(payload["address"], op.id))
        else:
            # The remover names the add-tags it observed, so the delta is the same on every
            # replica (an add it had not seen survives: add wins).
            tags = {bytes.fromhex(t) for t in payload["tags"]}
            allow_list.merge(ORSet.remove_tags(tags))

    return apply


def grant_key_of(account: str, delegate: str) -> str:
    """The ``keys`` table's key of ``account``'s grant to ``delegate``."""
    return f"{account}/{delegate}"


def _own_grant(op: Op, payload: dict[str, Any]) -> None:
    if payload["delegate"] == op.author:
        raise _unauthorized(f"{op.kind}: an account cannot grant a key to itself")


def _key_grant(state: State, op: Op, payload: dict[str, Any]) -> None:
    record = state._record("keys", grant_key_of(op.author, payload["delegate"]), owner=op.author)
    values = {
        "delegate": payload["delegate"],
        "scopes": payload["scopes"],
        "expires_s": payload["expires_s"],
        "spend_cap": payload.get("spend_cap"),
        "label": payload.get("label"),
        "grant_op": op.id.hex(),
        "revoked": False,
        "exists": True,
    }
    record.first("created", op.stamp)
    record.set_fields(values, op.stamp)


def _key_revoke(state: State, op: Op, payload: dict[str, Any]) -> None:
    record = state._record("keys", grant_key_of(op.author, payload["delegate"]), owner=op.author)
    record.set_fields({"revoked": True}, op.stamp)


def _kinds() -> dict[str, Kind]:
    kinds: list[Kind] = [
        Kind(
            "account.create",
            {"address": Addr(), "name": Str(length_max=64), "description": _TEXT},
            _own_account,
            _account_upsert,
        ),
        Kind(
            "account.update",
            {"address": Addr(), "name": Str(length_max=64), "description": _TEXT},
            _own_account,
            _account_upsert,
        ),
        Kind("account.delete", {"address": Addr()}, _own_account, _account_delete),
        Kind(
            "node.announce",
            {
                "node_id": Addr(),
                "host_region": _LABEL,
                "roles": ListOf(item=_LABEL, items_max=16),
                "version": _LABEL,
                "listen_addrs": ListOf(item=Str(length_max=256), items_max=16),
                "capabilities": StrMap(),
            },
            _own_node,
            _node_announce,
        ),
        Kind(
            "node.capacity",
            {"node_id": Addr(), "capacity": replace(_CAPACITY, required=True)},
            _own_node,
            _node_capacity,
        ),
        Kind("node.leave", {"node_id": Addr()}, _own_node, _node_leave),
        Kind(
            "key.grant",
            {
                "delegate": Addr(required=True),
                "scopes": ListOf(
                    item=Enum(values=DELEGABLE_SCOPES),
                    items_max=len(DELEGABLE_SCOPES),
                    required=True,
                ),
                "expires_s": Int(required=True, value_max=10**12),
                "spend_cap": Int(),
                "label": _LABEL,
            },
            _own_grant,
            _key_grant,
        ),
        Kind("key.revoke", {"delegate": Addr(required=True)}, _anyone, _key_revoke),
        Kind(
            "instance.create",
            {
                "id": _HEX_ID,
                "name": _NAME,
                "formfile": Str(length_max=_FORMFILE_BYTES_MAX, required=True),
                "description": _TEXT,
                "resources": _RESOURCES,
            },
            _owned_entity(instance_id_of, "instance"),
            _entity_upsert("instances", instance_id_of),
        ),
        Kind(
            "instance.update",
            {
                "id": _HEX_ID,
                "name": _NAME,
                "formfile": Str(length_max=_FORMFILE_BYTES_MAX),
                "description": _TEXT,
                "resources": _RESOURCES,
            },
            _owned_entity(instance_id_of, "instance"),
            _entity_upsert("instances", instance_id_of),
        ),
        Kind(
            "instance.stop",
            {"id": _HEX_ID, "name": _NAME},
            _owned_entity(instance_id_of, "instance"),
            _instance_desired("stopped"),
        ),
        Kind(
            "instance.start",
            {"id": _HEX_ID, "name": _NAME},
            _owned_entity(instance_id_of, "instance"),
            _instance_desired("running"),
        ),
        Kind(
            "instance.delete",
            {"id": _HEX_ID, "name": _NAME},
            _owned_entity(instance_id_of, "instance"),
            _entity_delete("instances", instance_id_of),
        ),
        Kind(
            "instance.claim",
            {"instance_id": replace(_HEX_ID, required=True)},
            _anyone,
            _instance_claim,
        ),
        Kind(
            "instance.status",
            {
                "instance_id": replace(_HEX_ID, required=True),
                "status": Enum(values=INSTANCE_STATUSES, required=True),
                "formnet_ip": Str(length_max=64),
                "detail": Str(length_max=1024),
            },
            _anyone,
            _instance_status,
        ),
    ]
    for table, noun, fields in (
        ("agents", "agent", _AGENT_FIELDS),
        ("models", "model", _MODEL_FIELDS),
    ):
        ident: dict[str, Field] = {"id": _HEX_ID, "name": _NAME}
        authorize = _owned_entity(build_id_of, noun)
        kinds += [
            Kind(
                f"{noun}.register",
                {**ident, **fields},
                authorize,
                _entity_upsert(table, build_id_of),
            ),
            Kind(
                f"{noun}.update", {**ident, **fields}, authorize, _entity_upsert(table, build_id_of)
            ),
            Kind(
                f"{noun}.delete",
                {**ident, "tags": _TAGS},
                authorize,
                _entity_delete(table, build_id_of),
            ),
            Kind(
                f"{noun}.allow",
                {**ident, "address": Addr(required=True)},
                authorize,
                _allow(table, True),
            ),
            Kind(
                f"{noun}.disallow",
                {
                    **ident,
                    "address": Addr(required=True),
                    "tags": replace(_TAGS, required=True),
                },
                authorize,
                _allow(table, False),
            ),
        ]
    return {k.name: k for k in kinds}


KINDS: Final[dict[str, Kind]] = _kinds()


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

    def _record(self, table: str, key: str, owner: str | None = None) -> Record:
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
        return keccak256(canonical_json(self.to_json())).hex()

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
        return {
            "instance_id": instance_id,
            "build_id": build_id_of(owner, fields["name"]),
            "instance_owner": owner,
            "name": fields["name"],
            "node_id": host,
            # None until the host node reports: nothing runs until a node says so.
            "status": report.get("status"),
            "formnet_ip": report.get("formnet_ip"),
            "desired_state": fields.get("desired_state", "running"),
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
