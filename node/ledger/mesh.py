"""The op kinds of the mesh: address claims and WireGuard keys, and the view built from them.

Theory of operation
-------------------
Addresses follow the rule of ``node.mesh.addresses`` (read it first); this module stores the
claims and applies the rule when reading. Everything lives in the ``mesh`` table:

* ``mesh.claim {"address", "subject"}``, signed by a node. Subject ``"node:<id>"`` may only be
  signed by that node (checked from the op alone, rule 2 of ``node.ledger.state``); a
  ``"slot:<instance_id>:<k>"`` claim is signed by the slot's host. The address must be a usable
  one of the network's range (``mesh_cidr_for(op.net)``). Stored in the subject's record as the
  signer's LWW report (a re-claim replaces the earlier one) plus a min-register
  ``claim:<signer>:<address>``: the first stamp at which that signer claimed that address for
  the subject, which is the claim's priority.
* ``mesh.key {"public_key", "endpoint"?, "listen_port"}``, signed by a node: its WireGuard public
  key (base64 of 32 bytes; the private key never leaves the node's data dir), in the record
  ``key:<node_id>`` as one LWW value (a later key op replaces the whole of the earlier one).

**Which claims count** is decided when reading (``mesh_view``), as in placement: only claims
signed by an announced node count (a node that left frees its addresses), and a slot claim only
if its signer is the slot's current host per ``State.instance`` (a slot that moved is claimed
again by its new host; the old host's claim stops counting at once). The counted claims go
through ``node.mesh.addresses.resolve``: the earliest priority wins an address, ties to the
smaller subject; losers show ``lost`` and re-claim with ``next_candidate``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from node.ledger.op import Op, OpRejected
from node.ledger.record import Kind, Record, Tables
from node.ledger.schema import Int, Str
from node.mesh.addresses import (
    Claim,
    Resolution,
    is_usable,
    mesh_cidr_for,
    next_candidate,
    resolve,
)

if TYPE_CHECKING:
    from node.ledger.state import State

__all__ = ["KINDS", "TABLES", "MeshView", "mesh_view", "node_subject", "slot_subject"]

TABLES: Final = ("mesh",)
_KEY_PREFIX: Final = "key:"
_SUBJECT_RE: Final = r"node:0x[0-9a-f]{40}|slot:[0-9a-f]{40}:(?:[0-9]|1[0-5])"
_ENDPOINT_RE: Final = r"[A-Za-z0-9.-]{1,253}:[0-9]{1,5}|\[[0-9A-Fa-f:.]{2,45}\]:[0-9]{1,5}"


def node_subject(node_id: str) -> str:
    """A node's address subject."""
    return f"node:{node_id.lower()}"


def slot_subject(instance_id: str, slot: int) -> str:
    """An instance slot's address subject."""
    return f"slot:{instance_id}:{slot}"


def _authorize_claim(op: Op, payload: dict[str, Any]) -> None:
    subject = payload["subject"]
    if subject.startswith("node:") and subject != node_subject(op.author):
        raise OpRejected(
            "unauthorized",
            f"mesh.claim: {op.author} may claim only for node:{op.author} (or a slot it hosts), "
            f"not {subject}",
        )
    cidr = mesh_cidr_for(op.net)
    if not is_usable(payload["address"], cidr):
        raise OpRejected(
            "invalid_payload",
            f"mesh.claim: address {payload['address']!r} is not a usable address of the mesh "
            f"range {cidr} (not the network or broadcast address, last octet not 0 or 255)",
            field="address",
        )


def _authorize_key(op: Op, payload: dict[str, Any]) -> None:
    try:
        raw = base64.b64decode(payload["public_key"], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise OpRejected(
            "invalid_payload",
            "mesh.key: public_key must be the base64 of a 32-byte WireGuard (X25519) public key",
            field="public_key",
        )
    endpoint = payload.get("endpoint")
    if endpoint is not None and not 1 <= int(endpoint.rsplit(":", 1)[1]) <= 65535:
        raise OpRejected(
            "invalid_payload", "mesh.key: endpoint port must be 1..65535", field="endpoint"
        )


def _apply_claim(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("mesh", payload["subject"])
    record.set_report(op.author, {"address": payload["address"], "at": op.wall_ms}, op.stamp)
    record.first(f"claim:{op.author}:{payload['address']}", op.stamp)


def _apply_key(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("mesh", _KEY_PREFIX + op.author)
    record.set_fields({"exists": True, "key": dict(payload), "at": op.wall_ms}, op.stamp)


@dataclass(frozen=True)
class MeshView:
    """Who holds which address, and the WireGuard peers, as one replica's state says."""

    network: str
    cidr: str
    resolution: Resolution
    keys: Mapping[str, Mapping[str, Any]]  # node_id -> its latest mesh.key payload
    slot_hosts: Mapping[str, str]  # slot subject -> its current host's node id

    def address_of(self, subject: str) -> str | None:
        return self.resolution.held.get(subject)

    def lost(self, subject: str) -> bool:
        return subject in self.resolution.lost

    def slot_address(self, instance_id: str, slot: int) -> str | None:
        return self.address_of(slot_subject(instance_id, slot))

    def holder_of(self, address: str) -> str | None:
        return self.resolution.holders.get(address)

    def to_claim(self, subject: str) -> str | None:
        """The address ``subject`` should claim now: None while it holds one; else (it never
        claimed, its claim does not count, or it lost) its first candidate no counted claim
        names. Every claimed address has a holder, so the holders are all that is taken."""
        if subject in self.resolution.held:
            return None
        return next_candidate(subject, self.resolution.holders.keys(), self.cidr, 0)

    def peers(self) -> list[dict[str, Any]]:
        """One entry per node holding an address and a key; ``allowed_ips`` also routes the
        slots it hosts (instances reach the mesh through their host)."""
        hosted: dict[str, list[str]] = {}
        for subject, host in sorted(self.slot_hosts.items()):
            address = self.address_of(subject)
            if address is not None:
                hosted.setdefault(host, []).append(f"{address}/32")
        out = []
        for node_id, key in sorted(self.keys.items()):
            address = self.address_of(node_subject(node_id))
            if address is None:
                continue
            out.append(
                {
                    "node_id": node_id,
                    "address": address,
                    "public_key": key["public_key"],
                    "endpoint": key.get("endpoint"),
                    "listen_port": key["listen_port"],
                    "allowed_ips": [f"{address}/32", *hosted.get(node_id, [])],
                }
            )
        return out


def _slot_hosts(state: State, subjects: list[str]) -> dict[str, str]:
    hosts: dict[str, str] = {}
    instances: dict[str, list[dict[str, Any]]] = {}
    for subject in subjects:
        _, instance_id, slot_text = subject.split(":")
        if instance_id not in instances:
            instance = state.instance(instance_id)
            instances[instance_id] = instance["slots"] if instance else []
        slot = int(slot_text)
        for view in instances[instance_id]:
            if view["slot"] == slot and view.get("node_id"):
                hosts[subject] = view["node_id"]
    return hosts


def mesh_view(state: State, network: str | None = None) -> MeshView:
    """Apply the rule to ``state``'s counted claims (``network``: the range's network,
    default the state's)."""
    network = state.network if network is None else network
    cidr = mesh_cidr_for(network)
    nodes = state.tables["nodes"]

    def is_node(address: str) -> bool:
        record = nodes.get(address)
        return record is not None and record.exists

    table: dict[str, Record] = state.tables["mesh"]
    slots = sorted(s for s in table if s.startswith("slot:"))
    slot_hosts = {s: h for s, h in _slot_hosts(state, slots).items() if is_node(h)}

    def signer_of(subject: str) -> str | None:
        # A node signs its own claim; a slot's claim counts from its current host only.
        if subject.startswith("node:"):
            return subject[len("node:") :]
        return slot_hosts.get(subject)

    claims = []
    keys: dict[str, Mapping[str, Any]] = {}
    for subject, record in table.items():
        if subject.startswith(_KEY_PREFIX):
            node_id = subject[len(_KEY_PREFIX) :]
            key = record.fields.get("key")
            if is_node(node_id) and isinstance(key, dict):
                keys[node_id] = key
            continue
        signer = signer_of(subject)
        if signer is None or not is_node(signer) or signer not in record.reports:
            continue
        address = record.reports[signer].get("address")
        if not isinstance(address, str) or not is_usable(address, cidr):
            continue
        first = record.firsts.get(f"claim:{signer}:{address}")
        if first is None:
            continue
        claims.append(Claim(subject, address, (first[0], first[1])))
    return MeshView(network, cidr, resolve(claims), keys, slot_hosts)


_ADDRESS = Str(
    required=True,
    length_min=7,
    length_max=15,
    pattern=r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}",
    hint="an IPv4 address such as 10.42.7.9",
)

KINDS: Final[list[Kind]] = [
    Kind(
        "mesh.claim",
        {
            "address": _ADDRESS,
            "subject": Str(
                required=True,
                length_max=64,
                pattern=_SUBJECT_RE,
                hint='"node:<node id>" or "slot:<instance id>:<slot 0-15>"',
            ),
        },
        _authorize_claim,
        _apply_claim,
    ),
    Kind(
        "mesh.key",
        {
            "public_key": Str(
                required=True,
                length_min=44,
                length_max=44,
                pattern=r"[A-Za-z0-9+/]{43}=",
                hint="base64 of a 32-byte WireGuard public key",
            ),
            "endpoint": Str(length_max=261, pattern=_ENDPOINT_RE, hint="host:port"),
            "listen_port": Int(value_min=1, value_max=65535, required=True),
        },
        _authorize_key,
        _apply_key,
    ),
]
