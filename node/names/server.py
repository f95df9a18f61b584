"""The DNS server: the ``fog`` zone over UDP and TCP, on dnslib's wire format, in Trio.

``respond(zone, packet, udp_bytes_max)`` turns one query's bytes into the answer's bytes (or
None: drop); ``serve_dns`` runs it on a UDP socket and a TCP listener bound to the same port.

Malformed input never stops the server: any packet dnslib cannot parse gets FORMERR when at
least its 12-byte header can be read (the id and opcode are echoed so the asker can match it),
and is dropped otherwise; a packet with the QR bit set (a response, not a query) is dropped so
two servers cannot bounce errors at each other; any other error in answering one packet is
caught and logged, SERVFAIL goes back, and the next packet is served. Everything is bounded: a UDP datagram is read
into a fixed buffer, a TCP message is at most 65,535 bytes by its 2-byte length prefix, at most
``TCP_CONNECTIONS_MAX`` connections are served at once (more are closed at accept), each for at
most ``TCP_IDLE_TIMEOUT_S`` between messages and ``TCP_QUERIES_MAX`` queries.

Over UDP an answer longer than 512 bytes (or the asker's EDNS0 size, at most
``EDNS_UDP_BYTES_MAX``) goes back with the TC bit and no records, and the asker retries over
TCP, which carries the whole answer.

The zone comes from ``zone_of()`` (built from the replica's state under its lock by the
caller); the server reuses one zone for at most ``ZONE_AGE_S_MAX`` so a flood of queries does
not rebuild it per packet, while a stopped instance drops out within a second plus its TTL.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import struct
from collections.abc import Callable
from typing import Any, Final

import trio
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSRecord

from node.names.records import Answer, Zone

__all__ = [
    "EDNS_UDP_BYTES_MAX",
    "TCP_CONNECTIONS_MAX",
    "TCP_IDLE_TIMEOUT_S",
    "TCP_QUERIES_MAX",
    "UDP_BYTES_CLASSIC",
    "ZONE_AGE_S_MAX",
    "respond",
    "serve_dns",
]

log = logging.getLogger(__name__)

UDP_BYTES_CLASSIC: Final = 512
EDNS_UDP_BYTES_MAX: Final = 4096
_DATAGRAM_BYTES_MAX: Final = 65_535
TCP_CONNECTIONS_MAX: Final = 64
TCP_IDLE_TIMEOUT_S: Final = 10.0
TCP_QUERIES_MAX: Final = 1000
ZONE_AGE_S_MAX: Final = 1.0
_HEADER_BYTES: Final = 12
_BIND_TRIES: Final = 20
_OPT: Final = 41
_A_RECORD_BYTES: Final = 16


def _formerr(packet: bytes, rcode: int = RCODE.FORMERR) -> bytes | None:
    """FORMERR (or ``rcode``) echoing the id and opcode of a packet dnslib could not parse (or
    that could not be answered), or None when it has no header or is itself a response."""
    if len(packet) < _HEADER_BYTES:
        return None
    ident, flags = struct.unpack("!HH", packet[:4])
    if flags & 0x8000:  # a response: never answer one
        return None
    opcode = (flags >> 11) & 0xF
    return struct.pack("!HHHHHH", ident, 0x8000 | (opcode << 11) | rcode, 0, 0, 0, 0)


def _udp_limit(request: DNSRecord) -> tuple[int, bool]:
    """The asker's UDP size (512 without EDNS0) and whether it sent EDNS0."""
    for rr in request.ar:
        if rr.rtype == _OPT:
            return max(UDP_BYTES_CLASSIC, min(int(rr.rclass), EDNS_UDP_BYTES_MAX)), True
    return UDP_BYTES_CLASSIC, False


def _reply(request: DNSRecord, answer: Answer, edns: bool) -> DNSRecord:
    reply = request.reply(ra=0, aa=0 if answer.rcode == "REFUSED" else 1)
    reply.header.rcode = getattr(RCODE, answer.rcode)
    for name, ttl_s, address in answer.records:
        reply.add_answer(RR(name, QTYPE.A, rdata=A(address), ttl=ttl_s))
    soa = answer.soa
    if soa is not None:
        times = (soa.serial, soa.refresh_s, soa.retry_s, soa.expire_s, soa.minimum_s)
        reply.add_auth(
            RR("fog.", QTYPE.SOA, rdata=SOA(soa.mname, soa.rname, times), ttl=soa.minimum_s)
        )
    if edns:
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_BYTES_MAX))
    return reply


def respond(
    zone: Zone | Callable[[], Zone], packet: bytes, udp_bytes_max: int | None
) -> bytes | None:
    """The answer to one DNS message, or None to drop it. ``udp_bytes_max`` None means TCP
    (no size limit but the 65,535 of the length prefix); otherwise the packet came over UDP and
    the answer is truncated past the asker's size. ``zone`` may be a callable so that a packet
    that is dropped or FORMERR never builds one."""
    try:
        request = DNSRecord.parse(packet)
    except Exception:  # dnslib raises DNSError, but also struct/Unicode/Index errors on junk
        return _formerr(packet)
    header = request.header
    if header.qr:
        return None
    if header.opcode != 0 or len(request.questions) != 1:
        code = RCODE.NOTIMP if header.opcode != 0 else RCODE.FORMERR
        reply = DNSRecord(DNSHeader(id=header.id, qr=1, opcode=header.opcode, rcode=code))
        return bytes(reply.pack())
    question = request.q
    limit, edns = _udp_limit(request)
    the_zone = zone() if callable(zone) and not isinstance(zone, Zone) else zone
    assert isinstance(the_zone, Zone)
    answer = the_zone.answer(str(question.qname), QTYPE.get(question.qtype, str(question.qtype)))
    # An A record packs to 16 bytes (its name compressed to a pointer at the question's):
    # a UDP answer that cannot fit is cut at once instead of being packed and thrown away.
    # (A lower bound: header, the question's name, type and class, the records.)
    question_bytes = len(str(question.qname).rstrip(".")) + 2 + 4
    estimate_bytes = _HEADER_BYTES + question_bytes + _A_RECORD_BYTES * len(answer.records)
    too_big = udp_bytes_max is not None and estimate_bytes > min(limit, udp_bytes_max)
    data = b"" if too_big else bytes(_reply(request, answer, edns).pack())
    if udp_bytes_max is not None and (too_big or len(data) > min(limit, udp_bytes_max)):
        # Too big for this datagram: the header and question with TC, the asker retries on TCP.
        short = DNSRecord(
            DNSHeader(
                id=header.id, qr=1, aa=1, tc=1, rd=header.rd, rcode=getattr(RCODE, answer.rcode)
            ),
            q=question,
        )
        if edns:
            short.add_ar(EDNS0(udp_len=EDNS_UDP_BYTES_MAX))
        data = bytes(short.pack())
    return data if len(data) <= _DATAGRAM_BYTES_MAX else None


class _ZoneCache:
    """One zone reused for at most ``ZONE_AGE_S_MAX`` (Trio's clock)."""

    def __init__(self, zone_of: Callable[[], Zone]) -> None:
        self._zone_of = zone_of
        self._zone: Zone | None = None
        self._built_at = 0.0

    def __call__(self) -> Zone:
        now = trio.current_time()
        if self._zone is None or now - self._built_at > ZONE_AGE_S_MAX:
            self._zone = self._zone_of()
            self._built_at = now
        return self._zone


def _safe_respond(zone: _ZoneCache, packet: bytes, udp_bytes_max: int | None) -> bytes | None:
    try:
        return respond(zone, packet, udp_bytes_max)
    except Exception:  # e.g. the zone could not be read: SERVFAIL, and serve the next packet
        log.exception("dns: answering a %d-byte packet failed", len(packet))
        return _formerr(packet, RCODE.SERVFAIL)


async def _serve_udp(sock: Any, zone: _ZoneCache) -> None:
    while True:
        try:
            packet, peer = await sock.recvfrom(_DATAGRAM_BYTES_MAX)
        except OSError:  # e.g. ICMP port unreachable from an earlier reply: keep serving
            continue
        data = _safe_respond(zone, packet, EDNS_UDP_BYTES_MAX)
        if data is not None:
            with contextlib.suppress(OSError):
                await sock.sendto(data, peer)


async def _read_exactly(stream: trio.SocketStream, count: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < count:
        chunk = await stream.receive_some(count - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


async def _serve_tcp_connection(stream: trio.SocketStream, zone: _ZoneCache) -> None:
    async with stream:
        for _ in range(TCP_QUERIES_MAX):
            with trio.move_on_after(TCP_IDLE_TIMEOUT_S):
                prefix = await _read_exactly(stream, 2)
                if prefix is None:
                    return
                packet = await _read_exactly(stream, struct.unpack("!H", prefix)[0])
                if packet is None:
                    return
                data = _safe_respond(zone, packet, None)
                if data is None:
                    return  # not even a header: nothing to answer on this stream
                await stream.send_all(struct.pack("!H", len(data)) + data)
                continue
            return  # idle too long


async def _serve_tcp(listener: trio.SocketListener, zone: _ZoneCache) -> None:
    connections = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal connections
        try:
            await _serve_tcp_connection(stream, zone)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            connections -= 1

    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: wait a little, keep listening
                log.warning("dns: tcp accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if connections >= TCP_CONNECTIONS_MAX:
                await stream.aclose()
                continue
            connections += 1
            nursery.start_soon(serve, stream)


async def _bind(host: str, port: int) -> tuple[Any, Any, int]:
    """A UDP socket and a listening TCP socket on one port (``port`` 0: a free one)."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    for _ in range(_BIND_TRIES):
        udp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        tcp = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            await udp.bind((host, port))
            bound = udp.getsockname()[1]
            tcp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            await tcp.bind((host, bound))
            tcp.listen(TCP_CONNECTIONS_MAX)
            return udp, tcp, bound
        except OSError as exc:
            udp.close()
            tcp.close()
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {host}")


async def serve_dns(
    zone_of: Callable[[], Zone],
    host: str,
    port: int,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer the ``fog`` zone on ``host:port`` over UDP and TCP until cancelled.
    ``task_status.started`` gets the bound ``"host:port"`` (the real port when ``port`` is 0)."""
    udp, tcp, bound = await _bind(host, port)
    zone = _ZoneCache(zone_of)
    with udp, tcp:
        listener = trio.SocketListener(tcp)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_udp, udp, zone)
            nursery.start_soon(_serve_tcp, listener, zone)
            task_status.started(f"{host}:{bound}")
