"""The libp2p transport on loopback: framing, identity, Noise-only, bad frames, dialing."""

from __future__ import annotations

import gc
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import multiaddr
import psutil
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair as secp256k1_key_pair
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from node.gossip.wire import frame
from node.identity.keys import NodeKey
from node.p2p.transport import (
    DEFAULT_PROTOCOL,
    Transport,
    TransportLimits,
    UnknownPeer,
    address_of_peer_id,
    open_transport,
    peer_id_of,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.real

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
STEP_TIMEOUT_S = 5


async def read_until_closed(stream: Any) -> None:
    """Reads until the remote ends the stream; py-libp2p reports a reset as EOF or reset."""
    while await stream.read(100):
        pass
    raise StreamEOF


def key(n: int) -> NodeKey:
    return NodeKey(n.to_bytes(32, "big"))


@asynccontextmanager
async def transports(
    *ns: int, limits: TransportLimits | None = None
) -> AsyncIterator[list[Transport]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(open_transport(key(n), LOOPBACK, limits=limits))
            for n in ns
        ]


async def receive(t: Transport) -> tuple[str, bytes]:
    with trio.fail_after(STEP_TIMEOUT_S):
        return await t.inbox.receive()


def test_peer_id_and_address_come_from_one_key() -> None:
    k = key(7)
    peer_id = peer_id_of(k)
    assert peer_id.startswith("16Uiu2HA")  # identity multihash of a secp256k1 key
    assert address_of_peer_id(peer_id) == k.address


def test_address_of_peer_id_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a base58 libp2p peer id"):
        address_of_peer_id("0OIl-not-base58")


async def test_packets_flow_both_ways_with_authenticated_sender() -> None:
    async with transports(1, 2) as (a, b):
        assert all(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in a.listen_addrs)
        assert a.listen_addrs[0].endswith(f"/p2p/{peer_id_of(key(1))}")
        assert await b.connect(a.listen_addrs[0]) == key(1).address
        for i in range(3):
            await b.send(key(1).address, b"to a %d" % i)
        assert [await receive(a) for _ in range(3)] == [
            (key(2).address, b"to a %d" % i) for i in range(3)
        ]
        # a learned b from the authenticated inbound stream and can answer without dialing.
        await a.send(key(2).address, b"to b")
        assert await receive(b) == (key(1).address, b"to b")


async def test_connect_without_peer_id_learns_it_from_the_handshake() -> None:
    async with transports(1, 3) as (a, c):
        bare = a.listen_addrs[0].split("/p2p/")[0]
        assert await c.connect(bare) == key(1).address
        await c.send(key(1).address, b"hello")
        assert await receive(a) == (key(3).address, b"hello")
        await a.send(key(3).address, b"hi")
        assert await receive(c) == (key(1).address, b"hi")


async def test_send_to_unknown_peer_is_a_clear_error() -> None:
    async with transports(1) as (a,):
        with pytest.raises(UnknownPeer, match="connect"):
            await a.send(key(9).address, b"x")


async def test_plaintext_only_dialer_is_refused() -> None:
    async with transports(1) as (a,):
        kp = secp256k1_key_pair(key(4).secret)
        plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
        async with plain.run(listen_addrs=[multiaddr.Multiaddr(LOOPBACK[0])]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(a.listen_addrs[0]))
            with (
                trio.fail_after(STEP_TIMEOUT_S),
                pytest.raises(Exception, match="unable to connect"),
            ):
                await plain.connect(info)
        assert a.peers == []


async def test_oversized_frame_resets_that_stream_only() -> None:
    limits = TransportLimits(frame_bytes_max=1000)
    async with transports(1, 2, 3, limits=limits) as (a, b, c):
        await b.connect(a.listen_addrs[0])
        await c.connect(a.listen_addrs[0])
        # c speaks the protocol but declares a frame over a's limit.
        bad = await c._host.new_stream(a._host.get_id(), [DEFAULT_PROTOCOL])
        await bad.write(frame(b"x" * 1001))
        with trio.fail_after(STEP_TIMEOUT_S), pytest.raises(StreamError):
            await read_until_closed(bad)
        # a is unharmed: other peers, and c itself on a fresh stream, still get through.
        await b.send(key(1).address, b"still fine")
        assert await receive(a) == (key(2).address, b"still fine")
        await c.send(key(1).address, b"new stream")
        assert await receive(a) == (key(3).address, b"new stream")
        assert a.dropped_frames == 0


async def test_send_refuses_a_packet_over_the_frame_limit() -> None:
    limits = TransportLimits(frame_bytes_max=100)
    async with transports(1, 2, limits=limits) as (a, b):
        await b.connect(a.listen_addrs[0])
        with pytest.raises(ValueError, match="frame limit"):
            await b.send(key(1).address, b"x" * 101)


async def _run_transport(n: int, *, task_status: trio.TaskStatus[Transport]) -> None:
    async with open_transport(key(n), LOOPBACK) as transport:
        task_status.started(transport)
        await trio.sleep_forever()


def _tcp_sockets() -> set[tuple[Any, Any]]:
    return {(c.laddr, c.raddr) for c in psutil.Process().net_connections(kind="tcp")}


async def test_cancelling_the_scope_around_transports_closes_every_socket() -> None:
    # How nodes in one process stop (tests, the simulator): their scope is cancelled. That
    # cancellation also reaches py-libp2p's connection tasks; before open_transport closed
    # each secured connection itself, 3-5 sockets per five-node fog were left to the GC.
    before = _tcp_sockets()
    async with trio.open_nursery() as nursery:
        nodes = [await nursery.start(_run_transport, n) for n in (1, 2, 3, 4)]
        with trio.fail_after(STEP_TIMEOUT_S):
            # Every pair dials each other at once, with and without /p2p/, so some pairs
            # end up with two connections.
            async with trio.open_nursery() as dials:
                for a, b in itertools.permutations(nodes, 2):
                    addr = b.listen_addrs[0]
                    dials.start_soon(
                        a.connect, addr if a.address < b.address else addr.split("/p2p/")[0]
                    )
            for a, b in itertools.permutations(nodes, 2):
                await a.send(b.address, b"from " + a.address.encode())
            for node in nodes:
                assert {(await receive(node))[0] for _ in range(3)} == {
                    n.address for n in nodes if n is not node
                }
        assert _tcp_sockets() - before  # connected: the check below can see sockets
        nursery.cancel_scope.cancel()
    assert _tcp_sockets() - before == set()
    gc.collect()  # an unclosed socket would now raise ResourceWarning (filterwarnings=error)


async def test_a_full_peer_table_evicts_the_least_recently_active_peer() -> None:
    async with transports(1, 2, 3, 4, limits=TransportLimits(peers_max=2)) as (a, b, c, d):
        with trio.fail_after(STEP_TIMEOUT_S):
            for sender in (b, c, b, d):  # a learns b, then c; b is active again; d arrives
                await sender.connect(a.listen_addrs[0])
                await sender.send(a.address, b"hello")
                assert await receive(a) == (sender.address, b"hello")
            # c was the least recently active: forgotten, and its connection closed, which c
            # notices (it forgets a in turn).
            assert a.peers == [b.address, d.address]
            await wait_until(lambda: a.address not in c.peers)
        with pytest.raises(UnknownPeer):
            await a.send(c.address, b"gone")
        with trio.fail_after(STEP_TIMEOUT_S):  # c can come back; now b is the oldest
            await c.connect(a.listen_addrs[0])
            await c.send(a.address, b"back")
            assert await receive(a) == (c.address, b"back")
            assert a.peers == [d.address, c.address]


async def test_a_peer_is_forgotten_when_its_connection_closes() -> None:
    async with transports(1) as (a,):
        async with transports(2) as (b,):
            await b.connect(a.listen_addrs[0])
            await b.send(a.address, b"hi")
            assert await receive(a) == (b.address, b"hi")
            assert a.peers == [b.address]
        with trio.fail_after(STEP_TIMEOUT_S):
            await wait_until(lambda: a.peers == [])
        with pytest.raises(UnknownPeer):
            await a.send(b.address, b"anyone?")


async def test_forget_closes_the_connection_and_the_peer_is_unknown_after() -> None:
    async with transports(1, 2) as (a, b):
        await a.connect(b.listen_addrs[0])
        await a.send(b.address, b"hi")
        assert await receive(b) == (a.address, b"hi")
        assert await a.forget(b.address.upper().replace("0X", "0x"))  # any spelling
        assert a.peers == []
        assert not await a.forget(b.address)
        with pytest.raises(UnknownPeer):
            await a.send(b.address, b"x")
        with trio.fail_after(STEP_TIMEOUT_S):  # b sees the connection go and forgets a
            await wait_until(lambda: b.peers == [])
            assert a._host.get_network().get_connections(b._host.get_id()) == []


QUIC_LOOPBACK = ["/ip4/127.0.0.1/udp/0/quic-v1"]


def _udp_sockets() -> set[Any]:
    return {c.laddr for c in psutil.Process().net_connections(kind="udp")}


async def test_packets_flow_over_quic_with_the_same_identity() -> None:
    udp_before = _udp_sockets()
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(open_transport(key(n), QUIC_LOOPBACK)) for n in (1, 2)
        ]
        assert all("/udp/" in addr and "/quic-v1/p2p/16Uiu2HA" in addr for addr in a.listen_addrs)
        assert a.peer_id == peer_id_of(key(1))
        with trio.fail_after(STEP_TIMEOUT_S):
            assert await b.connect(a.listen_addrs[0]) == key(1).address
            for i in range(3):
                await b.send(a.address, b"quic %d" % i)
            assert [await receive(a) for _ in range(3)] == [
                (b.address, b"quic %d" % i) for i in range(3)
            ]
            await a.send(b.address, b"and back")  # learned from the authenticated stream
            assert await receive(b) == (a.address, b"and back")
            # A frame over the limit resets that QUIC stream only, as over TCP.
            bad = await b._host.new_stream(a._host.get_id(), [DEFAULT_PROTOCOL])
            await bad.write(frame(b"x" * (a.limits.frame_bytes_max + 1))[:1024])
            with pytest.raises(StreamError):
                await read_until_closed(bad)
            await b.send(a.address, b"still fine")
            assert await receive(a) == (b.address, b"still fine")
    assert _udp_sockets() - udp_before == set()
    gc.collect()


async def test_a_tcp_node_dials_a_quic_node_and_bare_quic_addresses_are_refused() -> None:
    async with (
        open_transport(key(1), QUIC_LOOPBACK) as a,
        open_transport(key(2), LOOPBACK) as b,
    ):
        with trio.fail_after(STEP_TIMEOUT_S):
            assert await b.connect(a.listen_addrs[0]) == a.address
            await b.send(a.address, b"over quic")
            assert await receive(a) == (b.address, b"over quic")
        bare = a.listen_addrs[0].split("/p2p/")[0]
        with pytest.raises(ValueError, match="needs the peer id"):
            await b.connect(bare)
