"""Blob routes: upload a build context's chunks and manifest by digest, ask which are missing.

A build context travels as content-addressed blobs (``node.pack.context``): the client asks
``POST /blobs/missing`` which of its chunk digests (and its manifest digest) this node lacks,
``PUT``s only those, manifest last, then names the manifest digest in ``build.request``.

``PUT /blobs/{digest}`` takes the raw bytes (``Content-Encoding: zstd`` if compressed; the
signature covers the bytes as sent). The body may be over the gateway's JSON limit up to
``BLOB_BODY_BYTES_MAX``; decompression stops at ``BLOB_BYTES_MAX`` of output, so a zip bomb is
``413``, never memory. Bytes that do not hash to ``digest`` are ``400 digest_mismatch`` and
nothing is stored. Blobs are not owned: any signer may read one by digest (who knows a digest
has, or was given, its bytes already); reads are signed only so that the route is not an open
file server.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import trio
import zstandard

from node.gateway.endpoint import Endpoint
from node.gateway.http import HttpError, Request, Response
from node.pack.blobs import BlobError, BlobStore
from node.pack.context import CHUNK_BYTES, LIMITS, is_digest, sha256_hex

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = [
    "BATCH_BLOBS_MAX",
    "BATCH_BYTES_MAX",
    "BLOB_BODY_BYTES_MAX",
    "BLOB_BYTES_MAX",
    "DIGESTS_PER_ASK_MAX",
    "ROWS",
]

# One upload is a chunk (1 MiB) or a manifest (up to 4 MiB); the larger of the two bounds both.
BLOB_BYTES_MAX: Final = max(CHUNK_BYTES, LIMITS.manifest_bytes_max)
# zstd of incompressible bytes grows by a few bytes per 128 KiB block: 64 KiB of slack covers it.
BLOB_BODY_BYTES_MAX: Final = BLOB_BYTES_MAX + 64 * 1024
# 1,000 digests are ~67 KB of JSON: the ask stays inside the gateway's JSON body limit (128
# KiB), and the client asks in batches (node.client.context).
DIGESTS_PER_ASK_MAX: Final = 1000
# POST /blobs/batch: small blobs together, their bytes at most a blob's limit.
BATCH_BLOBS_MAX: Final = 512
BATCH_HEADER_BYTES_MAX: Final = 64 * 1024  # 512 x ["<64 hex>", size] is ~38 KB
BATCH_BYTES_MAX: Final = BLOB_BYTES_MAX + BATCH_HEADER_BYTES_MAX


def _store(app: GatewayApp) -> BlobStore:
    store = getattr(app.node, "blobs", None)
    if store is None:
        raise HttpError(503, "unavailable", "this node keeps no blob store")
    assert isinstance(store, BlobStore)
    return store


def _decompress(body: bytes, encoding: str | None, limit: int = BLOB_BYTES_MAX) -> bytes:
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        if len(body) > limit:
            raise HttpError(413, "too_large", f"a blob is at most {limit} bytes; send chunks")
        return body
    if encoding.strip().lower() != "zstd":
        raise HttpError(
            400,
            "bad_encoding",
            f"Content-Encoding {encoding!r} is not supported; send zstd or no encoding",
            "Content-Encoding",
        )
    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
        with reader:
            while piece := reader.read(256 * 1024):
                out += piece
                if len(out) > limit:
                    raise HttpError(
                        413,
                        "too_large",
                        f"the body decompresses to over {limit} bytes, the limit of this route",
                    )
    except zstandard.ZstdError as exc:
        raise HttpError(400, "bad_encoding", f"the body is not valid zstd: {exc}") from None
    return bytes(out)


async def blob_missing(app: GatewayApp, request: Request) -> Response:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise HttpError(400, "invalid_json", 'the body must be JSON {"digests": [...]}') from None
    digests = body.get("digests") if isinstance(body, dict) else None
    if not isinstance(digests, list):
        raise HttpError(400, "invalid", "digests must be a list of sha256 hex digests", "digests")
    if len(digests) > DIGESTS_PER_ASK_MAX:
        raise HttpError(
            413,
            "too_large",
            f"{len(digests)} digests; ask about at most {DIGESTS_PER_ASK_MAX} at a time",
            "digests",
        )
    for digest in digests:
        if not is_digest(digest):
            raise HttpError(
                400,
                "invalid",
                f"{str(digest)[:80]!r} is not a digest (64 lower-case hex digits)",
                "digests",
            )
    store = _store(app)
    missing = await trio.to_thread.run_sync(store.missing, digests)
    return Response(200, {"missing": missing})


async def blob_put(app: GatewayApp, request: Request) -> Response:
    digest = request.params["digest"]
    if not is_digest(digest):
        raise HttpError(400, "invalid", "the digest is 64 lower-case hex digits", "digest")
    store = _store(app)
    data = _decompress(request.body, request.header("content-encoding"))
    actual = sha256_hex(data)
    if actual != digest:
        raise HttpError(
            400,
            "digest_mismatch",
            f"the bytes hash to {actual}, not {digest}: send the blob the path names",
            "digest",
        )
    if store.has(digest):
        return Response(200, {"digest": digest, "size": len(data)})
    try:
        await trio.to_thread.run_sync(store.put, data, digest)
    except BlobError as exc:
        raise HttpError(400, "digest_mismatch", str(exc), "digest") from None
    return Response(201, {"digest": digest, "size": len(data)})


async def blob_batch(app: GatewayApp, request: Request) -> Response:
    """Many small blobs in one request: a request costs the node ~5 ms (HTTP, auth) where a
    4 KiB file costs microseconds, so a tree of small files goes ~250 at a time.

    The body (raw, or zstd with ``Content-Encoding: zstd``) is one JSON line
    ``{"blobs": [[digest, size], ...]}`` then the blobs' bytes back to back in that order;
    every blob is checked before any is stored, so a wrong one changes nothing."""
    store = _store(app)
    data = _decompress(request.body, request.header("content-encoding"), BATCH_BYTES_MAX)
    head, newline, rest = data.partition(b"\n")
    try:
        if not newline or len(head) > BATCH_HEADER_BYTES_MAX:
            raise ValueError("no header line")
        listed = json.loads(head)["blobs"]
        if not isinstance(listed, list) or len(listed) > BATCH_BLOBS_MAX:
            raise ValueError(f"blobs must be a list of at most {BATCH_BLOBS_MAX}")
        entries = [(str(d), int(n)) for d, n in listed]
    except (ValueError, KeyError, TypeError) as exc:
        raise HttpError(
            400,
            "invalid",
            f'the body must start with a JSON line {{"blobs": [[digest, size], ...]}} ({exc})',
        ) from None
    if any(not is_digest(d) or n < 0 for d, n in entries) or sum(n for _, n in entries) != len(
        rest
    ):
        raise HttpError(
            400,
            "invalid",
            f"the listed sizes add up to {sum(n for _, n in entries)} bytes; {len(rest)} follow "
            "the header (or a digest is not 64 lower-case hex digits)",
        )
    blobs, offset = [], 0
    for digest, size in entries:
        blobs.append((digest, rest[offset : offset + size]))
        offset += size
    try:
        stored = await trio.to_thread.run_sync(store.put_many, blobs)
    except BlobError as exc:
        raise HttpError(400, "digest_mismatch", f"{exc}; nothing of this batch is stored") from None
    return Response(201, {"blobs": len(blobs), "stored": stored})


async def blob_get(app: GatewayApp, request: Request) -> Response:
    digest = request.params["digest"]
    store = _store(app)
    if not store.has(digest):
        raise HttpError(404, "not_found", f"this node holds no blob {digest}")
    if store.size(digest) > BLOB_BYTES_MAX:
        # Images are fetched node to node (node.p2p.blobs), never whole through the gateway.
        raise HttpError(
            413, "too_large", f"blob {digest} is over {BLOB_BYTES_MAX} bytes; not served here"
        )
    data = await trio.to_thread.run_sync(store.get, digest)
    return Response(200, data, {"content-type": "application/octet-stream"})


ROWS = [
    Endpoint(
        method="POST",
        path="/blobs/missing",
        handler=blob_missing,
        operation_id="blobMissing",
        summary="Which of these blob digests this node lacks",
        auth="signed",
        body_schema={
            "type": "object",
            "required": ["digests"],
            "additionalProperties": False,
            "properties": {
                "digests": {
                    "type": "array",
                    "maxItems": DIGESTS_PER_ASK_MAX,
                    "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                }
            },
        },
        tag="blobs",
    ),
    Endpoint(
        method="POST",
        path="/blobs/batch",
        handler=blob_batch,
        operation_id="blobBatch",
        summary="Upload many small blobs at once: a JSON line of [digest, size] pairs, then their bytes",
        auth="signed",
        status=201,
        body_type="application/octet-stream",
        body_bytes_max=BATCH_BYTES_MAX + 64 * 1024,
        tag="blobs",
    ),
    Endpoint(
        method="PUT",
        path="/blobs/{digest}",
        handler=blob_put,
        operation_id="blobPut",
        summary="Upload one blob (a context chunk or manifest), raw or zstd, by its sha256",
        auth="signed",
        status=201,
        body_type="application/octet-stream",
        body_bytes_max=BLOB_BODY_BYTES_MAX,
        tag="blobs",
    ),
    Endpoint(
        method="GET",
        path="/blobs/{digest}",
        handler=blob_get,
        operation_id="blobGet",
        summary="The raw bytes of a blob this node holds",
        auth="signed",
        response_type="application/octet-stream",
        tag="blobs",
    ),
]
