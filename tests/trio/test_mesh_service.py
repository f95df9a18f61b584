"""The mesh service over one shared replica: every node and hosted slot ends up holding one
address of its own, a lost claim is claimed again, and a held one is left alone."""

from __future__ import annotations

import ipaddress
from typing import Any

from node.ledger.mesh import mesh_view, node_subject, slot_subject
from node.ledger.op import sign_op
from node.ledger.state import State, instance_id_of
from node.mesh.service import MeshService, subjects_of
from tests.helpers import NET, seeded_keys
from tests.trio.test_placement_services import Fog, Host

OWNER, NODE_A, NODE_B, NODE_C = seeded_keys(4, seed=11)
MESH = ipaddress.ip_network("10.42.0.0/16")


def _ingest(fog: Fog, key: Any, kind: str, payload: dict[str, Any]) -> None:
    fog.ingest(key, kind, payload)


async def test_nodes_and_hosted_slots_each_hold_an_address_of_their_own() -> None:
    fog = Fog()
    for key in (NODE_A, NODE_B, NODE_C):
        _ingest(fog, key, "node.announce", {"roles": ["vm-host"]})
    # A shipped instance whose slot 0 B holds (asked by A, accepted by B).
    payload = {"name": "web", "build_id": "ab" * 32, "replicas": 1, "via": NODE_A.address}
    _ingest(fog, OWNER, "instance.create", payload)
    iid = instance_id_of(OWNER.address, "web")
    ask = {"instance_id": iid, "slot": 0, "host": NODE_B.address, "attempt": 1}
    _ingest(fog, NODE_A, "placement.request", ask)
    answer = {"instance_id": iid, "slot": 0, "attempt": 1, "accepted": True}
    _ingest(fog, NODE_B, "placement.answer", answer)
    assert subjects_of(fog.state, NODE_B.address) == [
        node_subject(NODE_B.address),
        slot_subject(iid, 0),
    ]
    services = [MeshService(Host(fog, key)) for key in (NODE_A, NODE_B, NODE_C)]
    for service in services:
        await service.step()
    view = mesh_view(fog.state)
    subjects = [node_subject(k.address) for k in (NODE_A, NODE_B, NODE_C)]
    held = [view.address_of(s) for s in [*subjects, slot_subject(iid, 0)]]
    assert all(a is not None and ipaddress.ip_address(a) in MESH for a in held)
    assert len(set(held)) == 4
    assert services[1].address() == held[1]
    before = fog.state.op_count
    for service in services:
        await service.step()
    assert fog.state.op_count == before  # nothing to claim: held addresses are left alone


async def test_a_claim_lost_to_an_earlier_one_is_claimed_again() -> None:
    fog = Fog()
    for key in (NODE_A, NODE_B):
        _ingest(fog, key, "node.announce", {})
    service = MeshService(Host(fog, NODE_B))
    await service.step()
    mine = mesh_view(fog.state).address_of(node_subject(NODE_B.address))
    assert mine is not None
    # A claimed the same address earlier (its op arrives late, with an older stamp).
    early = sign_op(
        NODE_A,
        NET,
        (fog.clock_ms - 100, 0),
        "mesh.claim",
        {"address": mine, "subject": node_subject(NODE_A.address)},
    )
    fog.state.ingest(early.body, early.sig)
    view = mesh_view(fog.state)
    assert view.lost(node_subject(NODE_B.address))
    await service.step()
    view = mesh_view(fog.state)
    again = view.address_of(node_subject(NODE_B.address))
    assert again is not None
    assert again != mine
    assert view.address_of(node_subject(NODE_A.address)) == mine
    assert isinstance(fog.state, State)
