"""``serve_dns`` on a real loopback socket: a zone that cannot be read is SERVFAIL for that query
and the next query is answered; UDP and TCP share the port reported to ``task_status``."""

from __future__ import annotations

import struct

import trio
from dnslib import RCODE, DNSRecord

from node.names.records import Zone
from node.names.server import TCP_CONNECTIONS_MAX, serve_dns

IID = "11" * 20


def _zone() -> Zone:
    slots = [{"slot": 0, "status": "Started"}]
    return Zone(
        [{"instance_id": IID, "build_id": "ab" * 32, "slots": slots}],
        [],
        {},
        {f"slot:{IID}:0": "10.42.0.10"}.get,
    )


async def _udp_ask(port: int, name: str) -> DNSRecord:
    query = DNSRecord.question(name)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(query.pack())
        with trio.fail_after(10):
            reply = DNSRecord.parse(await sock.recv(65535))
    assert reply.header.id == query.header.id
    return reply


async def test_a_zone_that_fails_is_servfail_and_the_next_query_is_answered() -> None:
    calls = 0

    def zone_of() -> Zone:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("state unreadable")
        return _zone()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_dns, zone_of, "127.0.0.1", 0)
        host, port = bound.rsplit(":", 1)
        assert host == "127.0.0.1"
        failed = await _udp_ask(int(port), f"{IID}.instance.fog")
        assert failed.header.rcode == RCODE.SERVFAIL
        answered = await _udp_ask(int(port), f"{IID}.instance.fog")
        assert [str(r.rdata) for r in answered.rr] == ["10.42.0.10"]
        # TCP on the same port, two queries on one connection.
        stream = await trio.open_tcp_stream("127.0.0.1", int(port))
        async with stream:
            for _ in range(2):
                query = DNSRecord.question(f"{IID}.instance.fog").pack()
                await stream.send_all(struct.pack("!H", len(query)) + query)
                buf = b""
                with trio.fail_after(10):
                    while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                        chunk = await stream.receive_some()
                        assert chunk, "the server closed the connection"
                        buf += chunk
                reply = DNSRecord.parse(buf[2:])
                assert [str(r.rdata) for r in reply.rr] == ["10.42.0.10"]
        nursery.cancel_scope.cancel()


async def test_tcp_connections_past_the_limit_are_closed_and_service_resumes() -> None:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_dns, _zone, "127.0.0.1", 0)
        port = int(bound.rsplit(":", 1)[1])
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(TCP_CONNECTIONS_MAX)]
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(10):
            assert await extra.receive_some() == b"", "one past the limit is closed at accept"
        await extra.aclose()
        # UDP is not held up by TCP connections.
        assert (await _udp_ask(port, f"{IID}.instance.fog")).header.rcode == RCODE.NOERROR
        for stream in held:
            await stream.aclose()
        with trio.fail_after(10):
            while True:  # the server notices the closes; then a new connection is served
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                query = DNSRecord.question(f"{IID}.instance.fog").pack()
                try:
                    await stream.send_all(struct.pack("!H", len(query)) + query)
                    data = await stream.receive_some()
                    while data and len(data) < 2 + struct.unpack("!H", data[:2].rjust(2))[0]:
                        data += await stream.receive_some()
                except trio.BrokenResourceError:
                    data = b""
                await stream.aclose()
                if data:
                    break
                await trio.sleep(0.05)
        assert DNSRecord.parse(data[2:]).header.rcode == RCODE.NOERROR
        nursery.cancel_scope.cancel()
