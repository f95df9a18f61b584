"""Fuzzing the running DNS server: thousands of malformed packets over UDP and TCP (Hypothesis
and raw random bytes), then a valid query is still answered, over both.

The server runs in a thread of its own (its own ``trio.run``) so that Hypothesis drives plain
blocking sockets. Over UDP the test also checks the rule of ``node.names.server``: a packet of at
least 12 bytes without the QR bit gets exactly one answer with its id, anything else none.
"""

from __future__ import annotations

import queue
import random
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from dnslib import QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.names.records import Zone
from node.names.server import serve_dns

IID = "11" * 20
ZONE = Zone(
    [{"instance_id": IID, "build_id": "ab" * 32, "slots": [{"slot": 0, "status": "Started"}]}],
    [],
    {},
    {f"slot:{IID}:0": "10.42.0.10"}.get,
)
REPLY_WAIT_S = 5.0
Server = tuple[str, int]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    started: queue.Queue[Any] = queue.Queue()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_dns, lambda: ZONE, "127.0.0.1", 0)
            started.put((trio.lowlevel.current_trio_token(), nursery.cancel_scope, bound))

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    token, scope, bound = started.get(timeout=30)
    host, port = bound.rsplit(":", 1)
    yield host, int(port)
    trio.from_thread.run_sync(scope.cancel, trio_token=token)
    thread.join(timeout=30)
    assert not thread.is_alive(), "the DNS server did not stop when cancelled"


def _udp(server: Server) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(server)
    return sock


def _must_answer(packet: bytes) -> bool:
    return len(packet) >= 12 and not packet[2] & 0x80


def _check_udp(sock: socket.socket, packet: bytes) -> None:
    sock.send(packet)
    if not _must_answer(packet):
        return
    sock.settimeout(REPLY_WAIT_S)
    reply = sock.recv(65535)
    assert reply[:2] == packet[:2], "the answer carries the query's id"
    assert reply[2] & 0x80, "the answer has the QR bit"


def _assert_answers(server: Server) -> None:
    """A valid query is answered over UDP and over TCP."""
    query = DNSRecord.question(f"{IID}.instance.fog")
    with _udp(server) as sock:
        sock.settimeout(REPLY_WAIT_S)
        sock.send(query.pack())
        reply = DNSRecord.parse(sock.recv(65535))
    assert reply.header.id == query.header.id
    assert (reply.header.rcode, [str(r.rdata) for r in reply.rr]) == (RCODE.NOERROR, ["10.42.0.10"])
    with socket.create_connection(server, timeout=REPLY_WAIT_S) as tcp:
        data = query.pack()
        tcp.sendall(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", _recv_exactly(tcp, 2))[0]
        reply = DNSRecord.parse(_recv_exactly(tcp, size))
    assert [r.rtype for r in reply.rr] == [QTYPE.A]


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    buf = b""
    while len(buf) < count:
        chunk = sock.recv(count - len(buf))
        assert chunk, "the server closed the connection early"
        buf += chunk
    return buf


def _mutated_query(draw: st.DrawFn) -> bytes:
    """A valid query with bytes flipped, cut or appended: junk that gets past the header."""
    name = draw(st.sampled_from([f"{IID}.instance.fog", "x.fog", "example.com", "a.b.c.d"]))
    qtype = getattr(QTYPE, draw(st.sampled_from(["A", "AAAA", "ANY"])))
    header = DNSHeader(id=draw(st.integers(0, 0xFFFF)), rd=1)
    data = bytearray(DNSRecord(header, q=DNSQuestion(name, qtype)).pack())
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=32))


_header_then_junk = st.builds(
    lambda ident, flags, counts, tail: struct.pack("!HH4H", ident, flags, *counts) + tail,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.tuples(*[st.integers(0, 0xFFFF)] * 4),
    st.binary(max_size=300),
)
_packets = st.one_of(st.binary(max_size=700), _header_then_junk, st.composite(_mutated_query)())
_FUZZ = settings(
    max_examples=1500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_FUZZ
@given(packet=_packets)
def test_hypothesis_packets_over_udp_each_get_the_answer_the_rule_says(
    server: Server, packet: bytes
) -> None:
    with _udp(server) as sock:
        _check_udp(sock, packet)


@settings(_FUZZ, max_examples=400)
@given(packet=_packets, declared_extra=st.integers(-20, 20))
def test_hypothesis_packets_over_tcp_never_stop_the_server(
    server: Server, packet: bytes, declared_extra: int
) -> None:
    # The length prefix may lie (shorter or longer than what follows): the server reads what
    # it declared or times the connection out, and either way keeps serving.
    declared = max(0, min(0xFFFF, len(packet) + declared_extra))
    with socket.create_connection(server, timeout=REPLY_WAIT_S) as tcp:
        tcp.sendall(struct.pack("!H", declared) + packet)
        if declared_extra == 0 and _must_answer(packet):
            size = struct.unpack("!H", _recv_exactly(tcp, 2))[0]
            assert _recv_exactly(tcp, size)[:2] == packet[:2]


def test_thousands_of_raw_random_packets_then_a_valid_query_is_answered(server: Server) -> None:
    rng = random.Random(1313)
    with _udp(server) as sock:
        for _ in range(3000):
            packet = rng.randbytes(rng.choice([0, 1, 2, 11, 12, 13, 40, 512, 1500, 9000]))
            _check_udp(sock, packet)
    # Raw junk over TCP: some connections left half-sent, closed mid-message, or never written.
    for _ in range(300):
        with socket.create_connection(server, timeout=REPLY_WAIT_S) as tcp:
            body = rng.randbytes(rng.randrange(0, 600))
            how = rng.randrange(3)
            if how == 0:
                tcp.sendall(struct.pack("!H", len(body)) + body)
            elif how == 1:
                tcp.sendall(struct.pack("!H", 0xFFFF) + body)  # promises more than it sends
            else:
                tcp.sendall(body)
    _assert_answers(server)


def test_after_the_hypothesis_runs_the_server_still_answers(server: Server) -> None:
    _assert_answers(server)
