"""The op kinds of today's entities: accounts, nodes, delegated keys, instances, agents, models.

Theory of operation
-------------------
Each kind is a ``Kind`` (``node.ledger.record``): a payload schema (``node.ledger.schema``), an
authorizer and an applier. Rule 2 of ``node.ledger.state`` lives here: **authorization is a
pure function of the op**, because every entity's key is derived from its owner:

* an account's key is its address, a node's key is the node's address;
* an instance, agent or model is named by its owner's address and a per-owner ``name``:
  ``build_id = sha3_256(owner ‖ name)`` (the upstream formula), ``agent_id = model_id =
  build_id``, ``instance_id = sha3_256(build_id ‖ replica 0)[:20]``;
* a grant's key is ``account/delegate``.

An op only ever names ``(its author, name)``, so an author can only reach its own entities; a
target id an op also carries (the gateway fills it in) is recomputed and must match.
Appliers only merge into records (``Tables.record``): they never read what a replica has seen,
so applying commutes.

A new concern (billing, placement, the mesh, names) adds a module like this one with its own
``TABLES`` and ``KINDS`` and one line in ``node.ledger.state``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

from node.ledger.crdt import ORSet
from node.ledger.op import Op, OpRejected
from node.ledger.record import Applier, Authorizer, Kind, Tables
from node.ledger.request_op import DELEGABLE_SCOPES
from node.ledger.schema import (
    Addr,
    Bool,
    Enum,
    Field,
    Int,
    ListOf,
    Obj,
    Str,
    StrMap,
)

__all__ = [
    "INSTANCE_STATUSES",
    "KINDS",
    "TABLES",
    "VM_RESOURCES",
    "build_id_of",
    "grant_key_of",
    "instance_id_of",
]

# The state tables these kinds write.
TABLES: Final = ("accounts", "nodes", "instances", "agents", "models", "keys")

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
# Resources of VMs as placement counts them (``node.placement.core.Resources``).
VM_RESOURCES = Obj(
    spec={
        "vcpus": Int(value_max=1 << 20),
        "memory_mb": Int(value_max=1 << 40),
        "disk_gb": Int(value_max=1 << 40),
        "gpus": Int(value_max=1 << 16),
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
        # What the node offers to VMs and what of it no slot holds (``node.placement.core``).
        "vm_total": VM_RESOURCES,
        "vm_free": VM_RESOURCES,
    }
)

# What `form pack ship` adds to an instance: the image to boot, how many copies, who places them.
_SHIP_FIELDS: dict[str, Field] = {
    # The pack build (``node.ledger.builds.build_digest``) whose image the instance boots.
    "build_id": Str(length_min=64, length_max=64, pattern=r"[0-9a-f]+", hint="a pack build id"),
    "replicas": Int(value_min=1, value_max=16),
    # The node that took the request: it places the slots (``node.placement.service``).
    "via": Addr(),
}

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


def _all_of(*rules: Authorizer) -> Authorizer:
    def authorize(op: Op, payload: dict[str, Any]) -> None:
        for rule in rules:
            rule(op, payload)

    return authorize


def _formfile_or_build(op: Op, payload: dict[str, Any]) -> None:
    if "formfile" not in payload and "build_id" not in payload:
        raise OpRejected(
            "invalid_payload",
            f"{op.kind}: give a formfile (recorded only) or the build_id of a Built image "
            "(`form pack ship`), or both",
        )


# -- appliers ---------------------------------------------------------------------------------


def _account_upsert(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("accounts", op.author)
    values = {k: v for k, v in payload.items() if k != "address"}
    if op.kind == "account.create":
        values["exists"] = True
        record.first("created", op.stamp)
    record.set_fields(values, op.stamp)


def _account_delete(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    state.record("accounts", op.author).set_fields({"exists": False, "deleted": True}, op.stamp)


def _node_announce(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("nodes", op.author)
    values = {k: v for k, v in payload.items() if k != "node_id"}
    values["exists"] = True
    record.first("created", op.stamp)
    record.set_fields(values, op.stamp)


def _node_capacity(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("nodes", op.author)
    record.set_fields({"capacity": payload["capacity"], "last_heartbeat": op.wall_ms}, op.stamp)


def _node_leave(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    state.record("nodes", op.author).set_fields({"exists": False}, op.stamp)


def _entity_upsert(table: str, id_of: Callable[[str, str], str]) -> Applier:
    def apply(state: Tables, op: Op, payload: dict[str, Any]) -> None:
        key = id_of(op.author, payload["name"])
        record = state.record(table, key, owner=op.author)
        values = {k: v for k, v in payload.items() if k != "id"}
        if op.kind.endswith((".create", ".register")):
            values["exists"] = True
            record.first("created", op.stamp)
        record.set_fields(values, op.stamp)

    return apply


def _entity_delete(table: str, id_of: Callable[[str, str], str]) -> Applier:
    def apply(state: Tables, op: Op, payload: dict[str, Any]) -> None:
        key = id_of(op.author, payload["name"])
        record = state.record(table, key, owner=op.author)
        record.set_fields({"exists": False, "deleted": True}, op.stamp)
        if payload.get("tags"):
            # The allow-list entries the deleting gateway saw go with it (observed-remove, as
            # for disallow): a re-created private entity does not inherit its old allow-list.
            allow_list = record.sets.setdefault("allow", ORSet())
            allow_list.merge(ORSet.remove_tags({bytes.fromhex(t) for t in payload["tags"]}))

    return apply


def _instance_desired(desired: str) -> Applier:
    def apply(state: Tables, op: Op, payload: dict[str, Any]) -> None:
        key = instance_id_of(op.author, payload["name"])
        state.record("instances", key, owner=op.author).set_fields(
            {"desired_state": desired}, op.stamp
        )

    return apply


def _instance_reboot(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    # A request, not a state: the host reboots once for each new ``reboot_at`` it sees.
    key = instance_id_of(op.author, payload["name"])
    state.record("instances", key, owner=op.author).set_fields(
        {"reboot_at": op.wall_ms, "desired_state": "running"}, op.stamp
    )


def _instance_claim(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    state.record("instances", payload["instance_id"]).first(f"claim:{op.author}", op.stamp)


def _instance_status(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("instances", payload["instance_id"])
    values = {k: v for k, v in payload.items() if k != "instance_id"}
    record.set_report(op.author, values, op.stamp)


def _allow(table: str, allow: bool) -> Applier:
    def apply(state: Tables, op: Op, payload: dict[str, Any]) -> None:
        key = build_id_of(op.author, payload["name"])
        allow_list = state.record(table, key, owner=op.author).sets.setdefault("allow", ORSet())
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


def _key_grant(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("keys", grant_key_of(op.author, payload["delegate"]), owner=op.author)
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


def _key_revoke(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("keys", grant_key_of(op.author, payload["delegate"]), owner=op.author)
    record.set_fields({"revoked": True}, op.stamp)


def _kinds() -> list[Kind]:
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
                "formfile": Str(length_max=_FORMFILE_BYTES_MAX),
                "description": _TEXT,
                "resources": _RESOURCES,
                **_SHIP_FIELDS,
            },
            _all_of(_owned_entity(instance_id_of, "instance"), _formfile_or_build),
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
            "instance.reboot",
            {"id": _HEX_ID, "name": _NAME},
            _owned_entity(instance_id_of, "instance"),
            _instance_reboot,
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
    return kinds


KINDS: Final[list[Kind]] = _kinds()
