"""The blob protocol over real libp2p on loopback: fetch by digest, verify, refuse a liar.

Two (or three) real Transports on 127.0.0.1, each with its own BlobStore in a tmp dir.
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
import zstandard

from node.config import load_config
from node.identity.keys import NodeKey
from node.node import Node, NodeSettings, open_home, run_node
from node.p2p import blobs as blob_protocol
from node.p2p.transport import Exchange, Transport, TransportError, open_transport
from node.pack.blobs import BlobStore

pytestmark = pytest.mark.real

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
STEP_TIMEOUT_S = 30
ECHO = "/formation/test-echo/1.0.0"


def key(n: int) -> NodeKey:
    return NodeKey((1000 + n).to_bytes(32, "big"))


@asynccontextmanager
async def transports(*ns: int) -> AsyncIterator[list[Transport]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_transport(key(n), LOOPBACK)) for n in ns]
    gc.collect()  # a socket left to the garbage collector would warn (an error here)


def blob_bytes(size: int, seed: int) -> bytes:
    # Half random (incompressible), half repetitive: both kinds of zstd frames are exercised.
    rng = random.Random(seed)
    half = size // 2
    return rng.randbytes(half) + bytes(range(256)) * ((size - half) // 256 + 1)


async def test_request_response_round_trip_and_a_bounded_frame() -> None:
    async def echo(exchange: Exchange) -> None:
        data = await exchange.receive()
        await exchange.send(exchange.remote.encode() + b":" + data)

    with trio.fail_after(STEP_TIMEOUT_S):
        async with transports(1, 2) as (a, b):
            a.register_handler(ECHO, echo, frame_bytes_max=64)
            address = await b.connect(a.listen_addrs[0])
            answer = await b.request(address, ECHO, b"hello", frame_bytes_max=1024)
            assert answer == b.address.encode() + b":hello"
            # A frame over the handler's bound resets that stream: the asker sees it end.
            with pytest.raises(TransportError):
                await b.request(address, ECHO, b"x" * 65, frame_bytes_max=1024, timeout_s=5)
            # ...and the protocol still serves the next request.
            assert await b.request(address, ECHO, b"again", frame_bytes_max=1024) == (
                b.address.encode() + b":again"
            )


async def test_node_b_fetches_a_multi_megabyte_blob_from_a_by_digest(tmp_path: Path) -> None:
    store_a = BlobStore(tmp_path / "a")
    store_b = BlobStore(tmp_path / "b")
    data = blob_bytes(5 * 1024 * 1024 + 12345, seed=1)  # not a whole number of pieces
    source = tmp_path / "image.qcow2"
    source.write_bytes(data)
    digest = store_a.put_file(source)
    with trio.fail_after(STEP_TIMEOUT_S):
        async with transports(1, 2) as (a, b):
            blob_protocol.register(a, store_a)
            address = await b.connect(a.listen_addrs[0])
            path = await blob_protocol.fetch(b, store_b, digest, [address])
            assert path == store_b.path(digest)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
            assert path.read_bytes() == data
            # Held now: a second fetch needs no peer at all.
            assert await blob_protocol.fetch(b, store_b, digest, []) == path
    assert list((tmp_path / "b" / "tmp").iterdir()) == []


async def test_a_peer_without_the_blob_then_a_holder(tmp_path: Path) -> None:
    store_b = BlobStore(tmp_path / "b")
    store_c = BlobStore(tmp_path / "c")
    data = blob_bytes(300_000, seed=2)
    digest = store_c.put(data)
    with trio.fail_after(STEP_TIMEOUT_S):
        async with transports(1, 2, 3) as (a, b, c):
            blob_protocol.register(a, BlobStore(tmp_path / "a"))  # holds nothing
            blob_protocol.register(c, store_c)
            empty = await b.connect(a.listen_addrs[0])
            holder = await b.connect(c.listen_addrs[0])
            path = await blob_protocol.fetch(b, store_b, digest, [empty, holder])
            assert path.read_bytes() == data
            with pytest.raises(blob_protocol.BlobFetchError, match="not_found"):
                await blob_protocol.fetch(b, store_b, "ab" * 32, [empty, holder])


async def test_a_hostile_peer_answering_wrong_bytes_is_rejected_and_nothing_stored(
    tmp_path: Path,
) -> None:
    wanted = blob_bytes(2 * 1024 * 1024, seed=3)
    digest = hashlib.sha256(wanted).hexdigest()
    forged = bytearray(wanted)
    forged[-1] ^= 1

    async def liar(exchange: Exchange) -> None:
        await exchange.receive()
        await exchange.send(json.dumps({"size": len(forged)}).encode())
        for i in range(0, len(forged), blob_protocol.PIECE_BYTES):
            piece = bytes(forged[i : i + blob_protocol.PIECE_BYTES])
            await exchange.send(zstandard.ZstdCompressor().compress(piece))

    async def truncator(exchange: Exchange) -> None:
        await exchange.receive()
        await exchange.send(json.dumps({"size": len(wanted)}).encode())
        await exchange.send(zstandard.ZstdCompressor().compress(wanted[:1000]))
        # ...and ends the stream: the fetcher must not take 1000 bytes for the blob.

    store_b = BlobStore(tmp_path / "b")
    with trio.fail_after(STEP_TIMEOUT_S):
        async with transports(1, 2, 3) as (a, b, c):
            a.register_handler(blob_protocol.PROTOCOL, liar, frame_bytes_max=1024)
            c.register_handler(blob_protocol.PROTOCOL, truncator, frame_bytes_max=1024)
            liar_address = await b.connect(a.listen_addrs[0])
            truncator_address = await b.connect(c.listen_addrs[0])
            with pytest.raises(blob_protocol.BlobFetchError) as caught:
                await blob_protocol.fetch(b, store_b, digest, [liar_address, truncator_address])
            message = str(caught.value)
            assert f"{liar_address}: digest_mismatch" in message
            assert truncator_address in message
            assert "ended the stream" in message
            assert not store_b.has(digest)
            assert list((tmp_path / "b" / "tmp").iterdir()) == []
            # An honest peer after the liars still serves it.
            store_honest = BlobStore(tmp_path / "honest")
            store_honest.put(wanted)
            async with transports(4) as (d,):
                blob_protocol.register(d, store_honest)
                honest = await b.connect(d.listen_addrs[0])
                path = await blob_protocol.fetch(b, store_b, digest, [liar_address, honest])
                assert path.read_bytes() == wanted


async def test_a_size_over_the_fetch_cap_is_refused_before_any_byte(tmp_path: Path) -> None:
    store_a = BlobStore(tmp_path / "a")
    digest = store_a.put(b"z" * 100_000)
    store_b = BlobStore(tmp_path / "b")
    with trio.fail_after(STEP_TIMEOUT_S):
        async with transports(1, 2) as (a, b):
            blob_protocol.register(a, store_a)
            address = await b.connect(a.listen_addrs[0])
            with pytest.raises(blob_protocol.BlobFetchError, match="at most 50000"):
                await blob_protocol.fetch(b, store_b, digest, [address], size_bytes_max=50_000)
            assert not store_b.has(digest)


async def test_a_running_node_fetches_a_blob_from_its_connected_peers(tmp_path: Path) -> None:
    def settings(name: str) -> NodeSettings:
        data_dir = tmp_path / name
        return NodeSettings.from_config(
            load_config(data_dir),
            data_dir,
            listen_addrs=("/ip4/127.0.0.1/tcp/0",),
            bootstrap=[],
            gateway="127.0.0.1:0",
            heartbeat_s=0,
        )

    data = blob_bytes(3 * 1024 * 1024, seed=4)
    with trio.fail_after(STEP_TIMEOUT_S):
        async with (
            open_home(settings("a")) as home_a,
            open_home(settings("b")) as home_b,
            trio.open_nursery() as nursery,
        ):
            a: Node = await nursery.start(run_node, home_a)
            b: Node = await nursery.start(run_node, home_b)
            assert a.blobs.root == tmp_path / "a" / "blobs"
            digest = await trio.to_thread.run_sync(a.blobs.put, data)
            await b.transport.connect(a.transport.listen_addrs[0])
            path = await b.fetch_blob(digest)  # peers: the connected ones
            assert path.read_bytes() == data
            assert b.blobs.has(digest)
            a.stop()
            b.stop()


async def test_a_peer_trickling_bytes_is_given_up_after_the_peer_timeout(tmp_path: Path) -> None:
    wanted = blob_bytes(200_000, seed=5)
    digest = hashlib.sha256(wanted).hexdigest()
    stop_trickling = trio.Event()

    async def trickler(exchange: Exchange) -> None:
        await exchange.receive()
        await exchange.send(json.dumps({"size": len(wanted)}).encode())
        for i in range(0, len(wanted), 1000):
            await exchange.send(zstandard.ZstdCompressor().compress(wanted[i : i + 1000]))
            with trio.move_on_after(0.05):
                await stop_trickling.wait()

    store_b = BlobStore(tmp_path / "b")
    with trio.fail_after(STEP_TIMEOUT_S):
        async with transports(1, 2) as (a, b):
            a.register_handler(blob_protocol.PROTOCOL, trickler, frame_bytes_max=1024)
            address = await b.connect(a.listen_addrs[0])
            with pytest.raises(blob_protocol.BlobFetchError, match=r"took over 0\.5 s"):
                await blob_protocol.fetch(b, store_b, digest, [address], peer_timeout_s=0.5)
            stop_trickling.set()
            assert not store_b.has(digest)
            assert list((tmp_path / "b" / "tmp").iterdir()) == []


async def test_one_exchange_over_concurrent_max_is_refused_while_the_first_runs() -> None:
    release = trio.Event()
    entered = trio.Event()

    async def slow(exchange: Exchange) -> None:
        await exchange.receive()
        entered.set()
        await release.wait()
        await exchange.send(b"done")

    with trio.fail_after(STEP_TIMEOUT_S):
        async with transports(1, 2) as (a, b):
            a.register_handler(ECHO, slow, frame_bytes_max=64, concurrent_max=1)
            address = await b.connect(a.listen_addrs[0])
            answers: list[bytes] = []

            async def first() -> None:
                answers.append(await b.request(address, ECHO, b"1", frame_bytes_max=64))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                await entered.wait()  # the first exchange holds the one slot
                with pytest.raises(TransportError):
                    await b.request(address, ECHO, b"2", frame_bytes_max=64, timeout_s=5)
                release.set()
            assert answers == [b"done"]
