"""The pure parts of the mesh link (``node.mesh.link``): endpoint, peers, VM routes."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from node.ledger.mesh import mesh_view, slot_subject
from node.mesh.link import endpoint_host_of, nat_pairs, nat_ruleset, wanted_peers
from node.mesh.wireguard import key_from_base64
from tests.helpers import T0_MS, op
from tests.unit.test_mesh_addresses import (
    IID,
    NODE_A,
    NODE_B,
    NODE_C,
    _announce,
    _claim,
    _placed,
    _state,
)

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()


def test_the_endpoint_is_the_override_or_the_first_concrete_ipv4_listen_address() -> None:
    listen = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::1/tcp/4001", "/ip4/10.88.0.1/tcp/4001"]
    assert endpoint_host_of(listen) == "10.88.0.1"
    assert endpoint_host_of(listen, "192.0.2.9") == "192.0.2.9"
    assert endpoint_host_of(["/ip4/0.0.0.0/tcp/0"]) is None
    assert endpoint_host_of([]) is None
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        endpoint_host_of(listen, "node.example")  # WireGuard resolves no names


def _key(endpoint: str | None, key: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"public_key": key, "listen_port": 51820}
    if endpoint is not None:
        payload["endpoint"] = endpoint
    return payload


def _fog() -> Any:
    return _state(
        _announce(NODE_A),
        _announce(NODE_B),
        _announce(NODE_C),
        *_placed(NODE_B),
        _claim(NODE_A, "10.42.1.1", T0_MS + 4),
        _claim(NODE_B, "10.42.2.2", T0_MS + 4),
        _claim(NODE_C, "10.42.3.3", T0_MS + 4),
        _claim(NODE_B, "10.42.2.7", T0_MS + 4, slot_subject(IID, 0)),
        op(NODE_A, "mesh.key", _key("192.0.2.1:51820", KEY_A), wall_ms=T0_MS + 5),
        op(NODE_B, "mesh.key", _key("192.0.2.2:51820", KEY_B), wall_ms=T0_MS + 5),
        op(NODE_C, "mesh.key", _key(None, KEY_B), wall_ms=T0_MS + 5),  # no endpoint
    )


def test_peers_are_the_other_nodes_with_an_endpoint_and_route_their_slots() -> None:
    view = mesh_view(_fog())
    peers = wanted_peers(view.peers(), NODE_A.address)
    assert [(p.public_key, p.endpoint, p.allowed_ips) for p in peers] == [
        (key_from_base64(KEY_B), "192.0.2.2:51820", ["10.42.2.2/32", "10.42.2.7/32"])
    ]
    # B sees A (C has no endpoint, and never itself).
    assert [p.endpoint for p in wanted_peers(view.peers(), NODE_B.address)] == ["192.0.2.1:51820"]


def test_a_node_the_membership_saw_go_is_no_peer() -> None:
    view = mesh_view(_fog())
    gone = {NODE_B.address}
    assert wanted_peers(view.peers(), NODE_A.address, lambda n: n in gone) == []


def test_a_host_routes_only_its_own_slots_that_have_a_guest() -> None:
    view = mesh_view(_fog())
    guests = {(IID, 0): "10.77.0.10"}

    def guest_ip_of(instance_id: str, slot: int) -> str | None:
        return guests.get((instance_id, slot))

    assert nat_pairs(view, NODE_B.address, guest_ip_of) == [("10.42.2.7", "10.77.0.10")]
    assert nat_pairs(view, NODE_A.address, guest_ip_of) == []  # not A's slot
    assert nat_pairs(view, NODE_B.address, lambda i, s: None) == []  # no VM yet


def test_the_nat_script_replaces_the_table_in_one_transaction() -> None:
    script = nat_ruleset([("10.42.2.7", "10.77.0.10")], "10.42.0.0/16")
    lines = script.splitlines()
    # Declare, flush, define: nft applies a file atomically, so no gap and no duplicate rule.
    assert lines[:3] == [
        "table ip formation_mesh {}",
        "flush table ip formation_mesh",
        "table ip formation_mesh {",
    ]
    assert "    ip daddr 10.42.2.7 dnat to 10.77.0.10" in lines
    assert "    ip saddr 10.77.0.10 ip daddr 10.42.0.0/16 snat to 10.42.2.7" in lines
    empty = nat_ruleset([], "10.42.0.0/16")
    assert "dnat" not in empty
    assert "flush table ip formation_mesh" in empty
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        nat_ruleset([("10.42.2.7", "10.77.0.10; drop")], "10.42.0.0/16")
