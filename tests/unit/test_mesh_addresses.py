"""Mesh addresses: the pure rule (node.mesh.addresses) and the ledger kinds (node.ledger.mesh)."""

from __future__ import annotations

import base64
import ipaddress
import itertools
from typing import Any

import pytest

from node.ledger.mesh import mesh_view, node_subject, slot_subject
from node.ledger.op import Op, OpRejected
from node.ledger.state import State, instance_id_of
from node.mesh.addresses import (
    MESH_CIDR_DEFAULT,
    Claim,
    candidate,
    first_candidate,
    is_usable,
    mesh_cidr_for,
    next_candidate,
    resolve,
    usable_count,
)
from tests.helpers import NET, T0_MS, op, seeded_keys

OWNER, NODE_A, NODE_B, NODE_C, STRANGER = seeded_keys(5, seed=13)
ADDR = "10.42.7.9"
BUILD = "cd" * 32
IID = instance_id_of(OWNER.address, "web")
KEY_B64 = base64.b64encode(bytes(range(32))).decode()


def _announce(key: Any, t: int = T0_MS) -> Op:
    return op(key, "node.announce", {"listen_addrs": []}, wall_ms=t)


def _claim(key: Any, address: str, t: int, subject: str | None = None) -> Op:
    subject = subject or node_subject(key.address)
    return op(key, "mesh.claim", {"address": address, "subject": subject}, wall_ms=t)


def _state(*ops: Op) -> State:
    state = State(NET)
    for made in ops:
        state.ingest(made.body, made.sig)
    return state


def _summary(state: State) -> tuple[dict[str, str], list[str]]:
    view = mesh_view(state)
    subjects = [node_subject(k.address) for k in (NODE_A, NODE_B, NODE_C)]
    held = {s: a for s in subjects if (a := view.address_of(s)) is not None}
    return held, sorted(s for s in subjects if view.lost(s))


def test_mesh_cidr_comes_from_the_profile_and_defaults_for_unknown_networks() -> None:
    assert mesh_cidr_for("local") == "10.42.0.0/16"
    assert mesh_cidr_for("devnet") == "10.42.0.0/16"
    assert mesh_cidr_for("no-such-network") == MESH_CIDR_DEFAULT == "10.42.0.0/16"


def test_candidates_never_hit_network_broadcast_or_reserved_octets() -> None:
    cidr = "10.42.0.0/23"
    net = ipaddress.ip_network(cidr)
    seen = {candidate(f"node:{i}", cidr, a) for i in range(200) for a in range(10)}
    assert str(net.network_address) not in seen
    assert str(net.broadcast_address) not in seen
    assert all(int(ipaddress.ip_address(a)) & 0xFF not in (0, 255) for a in seen)
    assert all(ipaddress.ip_address(a) in net for a in seen)
    # 2,000 draws over 508 usable addresses reach nearly all of them.
    assert len(seen) > 0.95 * usable_count(cidr) == 0.95 * 508
    assert not is_usable("10.42.0.0", cidr)
    assert not is_usable("10.42.1.255", cidr)
    assert not is_usable("10.42.0.255", cidr)
    assert not is_usable("10.42.2.1", cidr)
    assert is_usable("10.42.1.254", cidr)


def test_candidate_order_is_a_function_of_the_subject() -> None:
    order = [candidate("node:x", MESH_CIDR_DEFAULT, a) for a in range(5)]
    assert order == [candidate("node:x", MESH_CIDR_DEFAULT, a) for a in range(5)]
    assert order[0] == first_candidate("node:x", MESH_CIDR_DEFAULT)
    assert len(set(order)) == 5
    assert order != [candidate("node:y", MESH_CIDR_DEFAULT, a) for a in range(5)]


def test_next_candidate_skips_taken_and_reports_a_full_range() -> None:
    cidr = "10.42.0.0/24"
    first = first_candidate("node:x", cidr)
    assert next_candidate("node:x", set(), cidr, 0) == first
    assert next_candidate("node:x", {first}, cidr, 0) != first
    every = {f"10.42.0.{i}" for i in range(1, 255)}
    last = "10.42.0.77"
    assert next_candidate("node:x", every - {last}, cidr, 0) == last
    with pytest.raises(ValueError, match="full"):
        next_candidate("node:x", every, cidr, 0)


def test_bad_ranges_are_refused_by_name() -> None:
    for bad in ("10.42.0.0/30", "10.42.0.1/16", "fd00::/64", "nonsense"):
        with pytest.raises(ValueError, match="mesh range"):
            first_candidate("node:x", bad)


def test_resolve_earliest_priority_wins_ties_to_the_smaller_subject() -> None:
    claims = [
        Claim("node:b", ADDR, (5, 0)),
        Claim("node:a", ADDR, (9, 0)),
        Claim("node:c", "10.42.1.1", (1, 0)),
    ]
    out = resolve(claims)
    assert out.held == {"node:b": ADDR, "node:c": "10.42.1.1"}
    assert out.lost == frozenset({"node:a"})
    tie = resolve([Claim("node:b", ADDR, (5, 0)), Claim("node:a", ADDR, (5, 0))])
    assert tie.held == {"node:a": ADDR}
    assert tie.lost == frozenset({"node:b"})


def test_a_collision_resolves_the_same_in_any_op_order() -> None:
    ops = [
        _announce(NODE_A),
        _announce(NODE_B),
        _announce(NODE_C),
        _claim(NODE_A, ADDR, T0_MS + 20),
        _claim(NODE_B, ADDR, T0_MS + 10),  # earlier: B wins
        _claim(NODE_C, "10.42.8.8", T0_MS + 30),
    ]
    outcomes = set()
    hashes = set()
    for order in itertools.permutations(ops):
        state = _state(*order)
        held, lost = _summary(state)
        outcomes.add((tuple(sorted(held.items())), tuple(lost)))
        hashes.add(state.state_hash())
    assert len(outcomes) == 1
    assert len(hashes) == 1
    held, lost = _summary(_state(*ops))
    assert held == {node_subject(NODE_B.address): ADDR, node_subject(NODE_C.address): "10.42.8.8"}
    assert lost == [node_subject(NODE_A.address)]


def test_the_loser_reclaims_and_holds_its_next_candidate() -> None:
    a = node_subject(NODE_A.address)
    ops = [_announce(NODE_A), _announce(NODE_B), _claim(NODE_B, ADDR, T0_MS + 1)]
    ops.append(_claim(NODE_A, ADDR, T0_MS + 2))
    view = mesh_view(_state(*ops))
    assert view.lost(a)
    assert view.address_of(a) is None
    taken = set(view.resolution.holders)
    again = next_candidate(a, taken, view.cidr, 1)
    assert again != ADDR
    # What the view tells the loser to claim is its first candidate not held by anyone.
    assert view.to_claim(a) == next_candidate(a, taken, view.cidr, 0) != ADDR
    assert view.to_claim(node_subject(NODE_B.address)) is None
    view = mesh_view(_state(*ops, _claim(NODE_A, again, T0_MS + 3)))
    assert view.to_claim(a) is None
    assert not view.lost(a)
    assert view.address_of(a) == again
    assert view.address_of(node_subject(NODE_B.address)) == ADDR


def test_a_refreshed_claim_keeps_its_first_priority() -> None:
    ops = [
        _announce(NODE_A),
        _announce(NODE_B),
        _claim(NODE_A, ADDR, T0_MS + 1),
        _claim(NODE_B, ADDR, T0_MS + 5),
        _claim(NODE_A, ADDR, T0_MS + 9),  # A re-announces: still first
    ]
    view = mesh_view(_state(*ops))
    assert view.address_of(node_subject(NODE_A.address)) == ADDR
    assert view.lost(node_subject(NODE_B.address))


def test_claims_count_only_from_announced_nodes_and_a_leave_frees_the_address() -> None:
    a = node_subject(NODE_A.address)
    unannounced = _state(_claim(NODE_A, ADDR, T0_MS + 1))
    assert mesh_view(unannounced).address_of(a) is None
    left = _state(
        _announce(NODE_A),
        _claim(NODE_A, ADDR, T0_MS + 1),
        op(NODE_A, "node.leave", {}, wall_ms=T0_MS + 2),
    )
    assert mesh_view(left).address_of(a) is None
    assert ADDR not in mesh_view(left).resolution.holders


def _placed(host: Any) -> list[Op]:
    ship = {"name": "web", "build_id": BUILD, "replicas": 2, "via": NODE_A.address}
    out = [op(OWNER, "instance.create", ship, wall_ms=T0_MS + 1)]
    for slot in (0, 1):
        ask = {"instance_id": IID, "slot": slot, "host": host.address, "attempt": 1}
        out.append(op(NODE_A, "placement.request", ask, wall_ms=T0_MS + 2))
        answer = {"instance_id": IID, "slot": slot, "attempt": 1, "accepted": True}
        out.append(op(host, "placement.answer", answer, wall_ms=T0_MS + 3))
    return out


def test_slot_claims_count_only_from_the_slots_host() -> None:
    nodes = [_announce(NODE_A), _announce(NODE_B), _announce(NODE_C)]
    s0, s1 = slot_subject(IID, 0), slot_subject(IID, 1)
    state = _state(
        *nodes,
        *_placed(NODE_B),
        _claim(NODE_B, "10.42.3.3", T0_MS + 4, s0),  # the host: counts
        _claim(NODE_C, "10.42.3.4", T0_MS + 4, s1),  # not the host: does not
    )
    view = mesh_view(state)
    assert view.slot_address(IID, 0) == "10.42.3.3"
    assert view.slot_address(IID, 1) is None
    assert view.address_of(s0) == "10.42.3.3"


def test_peers_list_nodes_with_an_address_and_a_key() -> None:
    key = {"public_key": KEY_B64, "endpoint": "192.0.2.7:51820", "listen_port": 51820}
    state = _state(
        _announce(NODE_A),
        _announce(NODE_B),
        *_placed(NODE_A),
        _claim(NODE_A, ADDR, T0_MS + 4),
        _claim(NODE_A, "10.42.3.3", T0_MS + 4, slot_subject(IID, 0)),
        _claim(NODE_B, "10.42.9.9", T0_MS + 4),  # no key: not a peer
        op(NODE_A, "mesh.key", key, wall_ms=T0_MS + 5),
    )
    assert mesh_view(state).peers() == [
        {
            "node_id": NODE_A.address,
            "address": ADDR,
            "public_key": KEY_B64,
            "endpoint": "192.0.2.7:51820",
            "listen_port": 51820,
            "allowed_ips": [f"{ADDR}/32", "10.42.3.3/32"],
        }
    ]


@pytest.mark.parametrize(
    ("kind", "payload", "reason", "names"),
    [
        (
            "mesh.claim",
            {"address": ADDR, "subject": "node:" + "0x" + "ab" * 20},
            "unauthorized",
            "may claim only",
        ),
        (
            "mesh.claim",
            {"address": "10.43.0.1", "subject": None},
            "invalid_payload",
            "10.42.0.0/16",
        ),
        ("mesh.claim", {"address": "10.42.0.0", "subject": None}, "invalid_payload", "network"),
        (
            "mesh.claim",
            {"address": "10.42.255.255", "subject": None},
            "invalid_payload",
            "broadcast",
        ),
        ("mesh.claim", {"address": "10.42.3.255", "subject": None}, "invalid_payload", "usable"),
        ("mesh.claim", {"address": "10.42.03.1", "subject": None}, "invalid_payload", "usable"),
        ("mesh.claim", {"address": ADDR, "subject": "host:x"}, "invalid_payload", "subject"),
        ("mesh.claim", {"address": ADDR}, "invalid_payload", "subject"),
        ("mesh.key", {"public_key": "A" * 44, "listen_port": 1}, "invalid_payload", "public_key"),
        (
            "mesh.key",
            {"public_key": base64.b64encode(b"x" * 31).decode() + "A", "listen_port": 1},
            "invalid_payload",
            "public_key",
        ),
        ("mesh.key", {"public_key": KEY_B64, "listen_port": 0}, "invalid_payload", "listen_port"),
        (
            "mesh.key",
            {"public_key": KEY_B64, "listen_port": 5, "endpoint": "h:99999"},
            "invalid_payload",
            "port",
        ),
        (
            "mesh.key",
            {"public_key": KEY_B64, "listen_port": 5, "secret": "x"},
            "invalid_payload",
            "secret",
        ),
    ],
)
def test_bad_payloads_are_refused_and_change_nothing(
    kind: str, payload: dict[str, Any], reason: str, names: str
) -> None:
    if payload.get("subject", "") is None:
        payload = {**payload, "subject": node_subject(NODE_A.address)}
    state = _state(_announce(NODE_A), _claim(NODE_A, "10.42.1.1", T0_MS + 1))
    before = state.state_hash()
    bad = op(NODE_A, kind, payload, wall_ms=T0_MS + 2)
    with pytest.raises(OpRejected) as caught:
        state.ingest(bad.body, bad.sig)
    assert caught.value.code == reason
    assert names in str(caught.value)
    assert state.state_hash() == before
    assert mesh_view(state).address_of(node_subject(NODE_A.address)) == "10.42.1.1"


def test_a_moved_slot_counts_only_its_new_hosts_claim() -> None:
    s0 = slot_subject(IID, 0)
    before = [
        _announce(NODE_A),
        _announce(NODE_B),
        _announce(NODE_C),
        *_placed(NODE_B),
        _claim(NODE_B, "10.42.3.3", T0_MS + 4, s0),
    ]
    assert mesh_view(_state(*before)).slot_address(IID, 0) == "10.42.3.3"
    ask = {"instance_id": IID, "slot": 0, "host": NODE_C.address, "attempt": 2}
    answer = {"instance_id": IID, "slot": 0, "attempt": 2, "accepted": True}
    moved = [
        op(NODE_A, "placement.request", ask, wall_ms=T0_MS + 5),
        op(NODE_C, "placement.answer", answer, wall_ms=T0_MS + 6),
    ]
    view = mesh_view(_state(*before, *moved))
    assert view.slot_address(IID, 0) is None  # the old host's claim stopped counting
    assert view.to_claim(s0) is not None
    view = mesh_view(_state(*before, *moved, _claim(NODE_C, "10.42.3.3", T0_MS + 7, s0)))
    assert view.slot_address(IID, 0) == "10.42.3.3"
