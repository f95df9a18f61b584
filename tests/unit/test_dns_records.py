"""The fog zone (node/names/records.py) and one packet's answer (node/names/server.respond):
running-only answers, NXDOMAIN with the SOA, REFUSED outside the zone, TTLs, truncation over
UDP and the whole answer over TCP, FORMERR for junk."""

import struct

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from node.ledger.builds import build_digest
from node.ledger.state import State
from node.names.records import (
    INSTANCE_TTL_S,
    NEGATIVE_TTL_S,
    NODE_TTL_S,
    Zone,
    build_label,
)
from node.names.server import UDP_BYTES_CLASSIC, respond
from tests.helpers import NET, T0_MS, op, seeded_keys

BUILD = "ab" * 32
OTHER_BUILD = "ab" * 8 + "cd" * 24  # shares 16 hex digits with BUILD
RUNNING, STOPPED = "11" * 20, "22" * 20
NODE = "0x" + "EF" * 20
ADDRESSES = {
    f"slot:{RUNNING}:0": "10.42.0.10",
    f"slot:{RUNNING}:1": "10.42.0.11",
    f"slot:{STOPPED}:0": "10.42.0.20",
    f"node:{NODE}": "10.42.1.1",
}


def _instance(iid: str, build_id: str, *statuses: str | None) -> dict[str, object]:
    return {
        "instance_id": iid,
        "build_id": build_id,
        "slots": [{"slot": k, "status": s} for k, s in enumerate(statuses)],
    }


def _zone(addresses: dict[str, str] = ADDRESSES, count: int = 0) -> Zone:
    instances = [
        _instance(RUNNING, BUILD, "Started", "Started"),
        _instance(STOPPED, BUILD, "Stopped"),
        _instance("33" * 20, OTHER_BUILD, "Started"),
    ]
    many = {}
    for k in range(count):  # a big build for truncation
        iid = f"{k:040x}"
        instances.append(_instance(iid, "ee" * 32, "Started"))
        many[f"slot:{iid}:0"] = f"10.43.{k // 250}.{k % 250 + 1}"
    return Zone(instances, [NODE], {"shop.fog": BUILD}, {**addresses, **many}.get)


def _ask(
    zone: Zone, name: str, qtype: str = "A", udp: int | None = 4096, edns: int | None = None
) -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    if edns is not None:
        query.add_ar(EDNS0(udp_len=edns))
    data = respond(zone, query.pack(), udp)
    assert data is not None
    reply = DNSRecord.parse(data)
    assert reply.header.id == query.header.id
    return reply


def _a(reply: DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)


def test_a_build_answers_its_running_slots_only() -> None:
    zone = _zone()
    answer = zone.answer(build_label(BUILD) + ".fog", "A")
    assert answer.rcode == "NOERROR"
    assert sorted(r[2] for r in answer.records) == ["10.42.0.10", "10.42.0.11"]
    assert {r[1] for r in answer.records} == {INSTANCE_TTL_S}
    reply = _ask(zone, build_label(BUILD).upper() + ".FOG.")
    assert _a(reply) == ["10.42.0.10", "10.42.0.11"]
    assert reply.header.aa == 1


def test_a_build_prefix_must_be_unique_and_long_enough() -> None:
    zone = _zone()
    assert zone.answer(BUILD[:63] + ".fog", "A").rcode == "NOERROR"
    # 16 digits are shared with OTHER_BUILD: ambiguous, so no such name.
    assert zone.answer(BUILD[:16] + ".fog", "A").rcode == "NXDOMAIN"
    assert zone.answer(BUILD[:17] + ".fog", "A").rcode == "NOERROR"
    assert zone.answer(BUILD[:11] + ".fog", "A").rcode == "NXDOMAIN"


def test_instances_slots_nodes_and_vanity_names() -> None:
    zone = _zone()
    assert _a(_ask(zone, f"{RUNNING}.instance.fog")) == ["10.42.0.10"]
    assert _a(_ask(zone, f"1.{RUNNING}.instance.fog")) == ["10.42.0.11"]
    stopped = _ask(zone, f"{STOPPED}.instance.fog")
    assert (stopped.header.rcode, _a(stopped)) == (RCODE.NOERROR, [])
    assert len(stopped.auth) == 1, "an empty answer carries the SOA"
    assert _ask(zone, f"7.{RUNNING}.instance.fog").header.rcode == RCODE.NXDOMAIN
    node = _ask(zone, f"{NODE[2:].lower()}.node.fog")
    assert _a(node) == ["10.42.1.1"]
    assert node.rr[0].ttl == NODE_TTL_S
    assert _a(_ask(zone, "shop.fog")) == ["10.42.0.10", "10.42.0.11"]


def test_an_address_not_yet_held_answers_nothing() -> None:
    zone = _zone(addresses={})
    reply = _ask(zone, f"{RUNNING}.instance.fog")
    assert (reply.header.rcode, _a(reply)) == (RCODE.NOERROR, [])


def test_unknown_names_are_nxdomain_with_the_soa_and_others_refused() -> None:
    zone = _zone()
    for name in ("nope.fog", "x.y.instance.fog", f"{'00' * 20}.node.fog"):
        reply = _ask(zone, name)
        assert reply.header.rcode == RCODE.NXDOMAIN, name
        assert [rr.rtype for rr in reply.auth] == [QTYPE.SOA]
        assert reply.auth[0].ttl == NEGATIVE_TTL_S
        assert str(reply.auth[0].rname) == "fog."
    refused = _ask(zone, "example.com")
    assert (refused.header.rcode, refused.rr, refused.auth) == (RCODE.REFUSED, [], [])
    nodata = _ask(zone, "shop.fog", "AAAA")
    assert (nodata.header.rcode, nodata.rr, len(nodata.auth)) == (RCODE.NOERROR, [], 1)


def test_a_big_answer_is_truncated_over_udp_and_whole_over_tcp() -> None:
    zone = _zone(count=60)
    name = build_label("ee" * 32) + ".fog"
    udp = _ask(zone, name, udp=4096)  # no EDNS: the classic 512 bytes
    assert udp.header.tc == 1
    assert udp.rr == []
    assert str(udp.q.qname) == name + "."
    tcp = _ask(zone, name, udp=None)
    assert tcp.header.tc == 0
    assert len(_a(tcp)) == 60
    assert len(tcp.pack()) > UDP_BYTES_CLASSIC
    # With EDNS0 asking 4096 bytes, the whole answer fits in one datagram.
    edns = _ask(zone, name, udp=4096, edns=4096)
    assert (edns.header.tc, len(_a(edns))) == (0, 60)


def test_junk_gets_formerr_with_its_id_or_is_dropped() -> None:
    zone = _zone()
    assert respond(zone, b"", 512) is None
    assert respond(zone, b"\x12\x34\x01", 512) is None
    junk = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 5, 0, 0, 0) + b"\xff" * 7
    data = respond(zone, junk, 512)
    assert data is not None
    ident, flags = struct.unpack("!HH", data[:4])
    assert (ident, flags & 0x8000, flags & 0xF) == (0xBEEF, 0x8000, RCODE.FORMERR)
    # A response (QR set) is never answered: two servers cannot bounce errors.
    reply = DNSRecord.question("shop.fog").reply()
    assert respond(zone, reply.pack(), 512) is None


def test_the_zone_from_state_has_nodes_names_and_no_answer_before_a_slot_runs() -> None:
    alice, node_key = seeded_keys(2, seed=5)
    build_id = build_digest(alice.address, "NAME web\n", "ab" * 32)
    state = State(NET)
    for made in (
        op(node_key, "node.announce", {"version": "test"}),
        op(alice, "build.request", {"name": "web", "formfile": "NAME web\n", "context": "ab" * 32}),
        op(alice, "instance.create", {"name": "web", "build_id": build_id}),
        op(alice, "dns.add", {"domain": "shop", "build_id": build_id}, T0_MS + 1),
    ):
        state.ingest(made.body, made.sig)
    iid = state.instances()[0]["instance_id"]
    addresses = {f"node:{node_key.address}": "10.42.7.7", f"slot:{iid}:0": "10.42.7.8"}
    zone = Zone.from_state(state, addresses.get)
    assert [r[2] for r in zone.answer(f"{node_key.address[2:]}.node.fog", "A").records] == [
        "10.42.7.7"
    ]
    # The name and the instance exist, but no slot is Started yet: no address is answered.
    for name in ("shop.fog", f"{iid}.instance.fog", build_label(build_id) + ".fog"):
        answer = zone.answer(name, "A")
        assert (answer.rcode, answer.records) == ("NOERROR", ()), name
    assert zone.soa.serial == state.op_count


def test_a_slot_answers_while_its_host_reports_started_and_stops_when_it_stops() -> None:
    owner, placer, host = seeded_keys(3, seed=17)
    build_id = "ab" * 32
    state = State(NET)
    ship = {"name": "web", "build_id": build_id, "replicas": 1, "via": placer.address}
    for made in (
        op(placer, "node.announce", {"listen_addrs": []}),
        op(host, "node.announce", {"listen_addrs": []}),
        op(owner, "instance.create", ship, T0_MS + 1),
    ):
        state.ingest(made.body, made.sig)
    iid = state.instances()[0]["instance_id"]
    slot = {"instance_id": iid, "slot": 0}
    free = {"vcpus": 1, "memory_mb": 512, "disk_gb": 5}
    for made in (
        op(placer, "placement.request", {**slot, "host": host.address, "attempt": 1}, T0_MS + 10),
        op(
            host,
            "placement.answer",
            {**slot, "attempt": 1, "accepted": True, "free": free},
            T0_MS + 20,
        ),
        op(host, "vm.status", {**slot, "status": "Started"}, T0_MS + 30),
    ):
        state.ingest(made.body, made.sig)
    addresses = {f"slot:{iid}:0": "10.42.3.4"}
    name = build_label(build_id) + ".fog"
    running = Zone.from_state(state, addresses.get).answer(name, "A")
    assert running.records == ((name + ".", INSTANCE_TTL_S, "10.42.3.4"),)
    stopped = op(host, "vm.status", {**slot, "status": "Stopped"}, T0_MS + 40)
    state.ingest(stopped.body, stopped.sig)
    after = Zone.from_state(state, addresses.get).answer(name, "A")
    assert (after.rcode, after.records) == ("NOERROR", ())


def test_the_zone_answers_the_mesh_views_addresses() -> None:
    """With the real mesh view (node/ledger/mesh.py) as ``address_of``: a held claim answers."""
    from node.ledger.mesh import mesh_view
    from node.mesh.addresses import first_candidate, mesh_cidr_for

    node_key, other = seeded_keys(2, seed=23)
    subject = f"node:{node_key.address}"
    address = first_candidate(subject, mesh_cidr_for(NET))
    state = State(NET)
    for made in (
        op(node_key, "node.announce", {"listen_addrs": []}),
        op(other, "node.announce", {"listen_addrs": []}),
        op(node_key, "mesh.claim", {"address": address, "subject": subject}, T0_MS + 1),
    ):
        state.ingest(made.body, made.sig)
    zone = Zone.from_state(state, mesh_view(state).address_of)
    name = f"{node_key.address[2:]}.node.fog"
    assert zone.answer(name, "A").records == ((name + ".", NODE_TTL_S, address),)
    # The other node claimed nothing: its name exists but has no address yet.
    empty = zone.answer(f"{other.address[2:]}.node.fog", "A")
    assert (empty.rcode, empty.records) == ("NOERROR", ())
