"""The blob protocol: fetch a content-addressed blob (a context chunk, an image) from peers.

Theory of operation
-------------------
Protocol ``/formation/blobs/1.0.0``, one stream per fetch (``Transport.open_exchange``):

1. the fetcher sends one frame, JSON ``{"digest": "<sha256 hex>"}``;
2. the holder answers one header frame, JSON ``{"size": <bytes>}``, or
   ``{"error": "not_found" | "bad_request", "message": ...}`` and ends;
3. then ``size`` bytes follow as frames, each one zstd frame of at most ``PIECE_BYTES`` raw
   bytes (so a frame on the wire is bounded, whatever the blob's size).

The fetcher trusts nothing of it: a size over ``size_bytes_max`` is refused before a byte is
read, every piece is decompressed with a hard cap of ``PIECE_BYTES`` (a zstd bomb stops
there), the bytes stream through ``BlobStore.writer`` to a temporary file (a ~500 MB image is
never in memory), and only bytes whose sha256 is the digest asked for become a blob. A peer
that answers wrong, short, long or slow bytes is given up on, nothing is stored, and the next
peer in ``peers`` is tried (a whole transfer from one peer is bounded by ``peer_timeout_s``,
each frame by ``IO_TIMEOUT_S``); at most ``SERVING_MAX`` transfers are served at once.
``BlobFetchError`` names each peer's failure when none served it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio
import zstandard

from node.p2p.transport import Exchange, Transport, TransportError
from node.pack.blobs import BlobError, BlobStore
from node.pack.context import is_digest

__all__ = [
    "FETCH_BYTES_MAX",
    "PIECE_BYTES",
    "PROTOCOL",
    "BlobFetchError",
    "fetch",
    "register",
]

logger = logging.getLogger(__name__)

PROTOCOL: Final = "/formation/blobs/1.0.0"
PIECE_BYTES: Final = 1024 * 1024
# zstd can grow incompressible input by a little; the frame limit leaves room for it.
FRAME_BYTES_MAX: Final = PIECE_BYTES + 64 * 1024
# An image is ~500 MB; 4 GiB bounds one fetch (and the disk it can take) with room to spare.
FETCH_BYTES_MAX: Final = 4 * 1024 * 1024 * 1024
_HEADER_BYTES_MAX: Final = 1024
_ZSTD_LEVEL: Final = 1  # images are large: speed over ratio
IO_TIMEOUT_S: Final = 30.0  # no frame for this long: the peer is given up on
# A whole fetch from one peer: 4 GiB at ~5 MB/s, so only a peer trickling bytes hits it.
PEER_FETCH_TIMEOUT_S: Final = 900.0
# Concurrent transfers this node serves; one more is refused and its asker tries elsewhere.
SERVING_MAX: Final = 8


class BlobFetchError(Exception):
    """No peer served the blob; the message names each peer tried and why it failed."""


def _read_piece(path: Path, offset: int) -> bytes:
    with path.open("rb") as source:
        source.seek(offset)
        raw = source.read(PIECE_BYTES)
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)


def register(transport: Transport, store: BlobStore) -> None:
    """Serve ``store``'s blobs to any peer that asks, on ``PROTOCOL``."""

    async def serve(exchange: Exchange) -> None:
        try:
            ask = json.loads(await exchange.receive())
        except ValueError:
            ask = None
        digest = ask.get("digest") if isinstance(ask, dict) else None
        if not is_digest(digest):
            await exchange.send(
                json.dumps({"error": "bad_request", "message": 'send {"digest": hex}'}).encode()
            )
            return
        assert isinstance(digest, str)
        if not store.has(digest):
            await exchange.send(
                json.dumps({"error": "not_found", "message": f"no blob {digest}"}).encode()
            )
            return
        path = store.path(digest)
        size = path.stat().st_size
        await exchange.send(json.dumps({"size": size}).encode())
        for offset in range(0, size, PIECE_BYTES):
            piece = await trio.to_thread.run_sync(_read_piece, path, offset)
            await exchange.send(piece)

    transport.register_handler(
        PROTOCOL,
        serve,
        frame_bytes_max=_HEADER_BYTES_MAX,
        timeout_s=IO_TIMEOUT_S,
        handler_timeout_s=PEER_FETCH_TIMEOUT_S,
        concurrent_max=SERVING_MAX,
    )


def _unpack(compressed: bytes) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=True)
    with reader:
        raw = reader.read(PIECE_BYTES + 1)
    if len(raw) > PIECE_BYTES:
        raise BlobError(f"a piece decompresses to over {PIECE_BYTES} bytes")
    return raw


async def _fetch_from(
    transport: Transport, store: BlobStore, digest: str, peer: str, size_bytes_max: int
) -> Path:
    async with transport.open_exchange(
        peer, PROTOCOL, frame_bytes_max=FRAME_BYTES_MAX, timeout_s=IO_TIMEOUT_S
    ) as exchange:
        await exchange.send(json.dumps({"digest": digest}).encode())
        try:
            header = json.loads(await exchange.receive())
        except ValueError:
            raise BlobError("its header is not JSON") from None
        if not isinstance(header, dict):
            raise BlobError("its header is not an object")
        if "error" in header:
            raise BlobError(f"{header.get('error')}: {str(header.get('message'))[:200]}")
        size = header.get("size")
        if type(size) is not int or size < 0:
            raise BlobError(f"its header gives no size: {str(header)[:200]}")
        if size > size_bytes_max:
            raise BlobError(f"it offers {size} bytes; this fetch takes at most {size_bytes_max}")
        with store.writer(digest, size_bytes_max=size) as out:
            while out.size < size:
                raw = await trio.to_thread.run_sync(_unpack, await exchange.receive())
                if not raw:
                    raise BlobError("it sent an empty piece")
                await trio.to_thread.run_sync(out.write, raw)
            await trio.to_thread.run_sync(out.commit)
    return store.path(digest)


async def fetch(
    transport: Transport,
    store: BlobStore,
    digest: str,
    peers: Sequence[str],
    *,
    size_bytes_max: int = FETCH_BYTES_MAX,
    peer_timeout_s: float = PEER_FETCH_TIMEOUT_S,
) -> Path:
    """The path of blob ``digest`` in ``store``, fetched from the first of ``peers`` that has
    it and sends exactly its bytes; ``BlobFetchError`` naming each failure if none did."""
    if not is_digest(digest):
        raise ValueError(f"{digest!r} is not a blob digest (64 lower-case hex digits)")
    if store.has(digest):
        return store.path(digest)
    failures: list[str] = []
    for peer in peers:
        try:
            with trio.move_on_after(peer_timeout_s):
                return await _fetch_from(transport, store, digest, peer, size_bytes_max)
            failures.append(f"{peer}: the transfer took over {peer_timeout_s} s")
        except (BlobError, TransportError, zstandard.ZstdError) as error:
            logger.info("fetching blob %s from %s failed: %s", digest, peer, error)
            failures.append(f"{peer}: {error}")
    if not failures:
        raise BlobFetchError(f"blob {digest}: no peer to fetch it from (connect to one first)")
    raise BlobFetchError(f"no peer served blob {digest}: " + "; ".join(failures))
