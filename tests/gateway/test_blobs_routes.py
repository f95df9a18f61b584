"""The blob routes over real HTTP (the gateway server on loopback), and a context upload through them."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import zstandard

from node.client.api import ApiError, GatewayClient
from node.client.context import collect, upload
from node.client.signer import sign_request
from node.gateway.app import GatewayApp, serve_gateway
from node.gateway.http import REQUEST_BODY_BYTES_MAX
from node.gateway.routes.blobs import BLOB_BYTES_MAX, DIGESTS_PER_ASK_MAX
from node.identity.keys import NodeKey
from node.ledger.op import Op
from node.pack.blobs import BlobStore, materialize
from node.pack.context import parse_manifest
from node.replica import Replica, SubmitResult
from tests.helpers import NET, seeded_keys

(ALICE,) = seeded_keys(1, seed=41)


class _Node:
    def __init__(self, replica: Replica, blobs: BlobStore) -> None:
        self.replica = replica
        self.blobs = blobs

    def info(self) -> dict[str, Any]:
        return {"address": "0x" + "00" * 20, "network": NET}

    async def submit_checked(self, ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult:
        return await trio.to_thread.run_sync(
            self.replica.submit_checked, ops, int(time.time() * 1000)
        )


@dataclass
class Gw:
    url: str
    store: BlobStore
    http: httpx.AsyncClient

    async def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        key: NodeKey | None = ALICE,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if key is not None:
            sent.update(
                sign_request(key, method, path, body, int(time.time()), os.urandom(8).hex())
            )
        if len(body) > 512 * 1024:
            # Sent from a thread with the sync client: the gateway answers 413 before reading
            # the body, and httpx's async body iterator would be left unclosed (a warning).
            def run() -> httpx.Response:
                with httpx.Client(timeout=30) as http:
                    return http.request(method, self.url + path, content=body, headers=sent)

            return await trio.to_thread.run_sync(run)
        return await self.http.request(method, self.url + path, content=body, headers=sent)


@pytest.fixture
async def gw(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Gw]:
    replica = Replica.open(tmp_path / "node", NET)
    store = BlobStore(tmp_path / "blobs")
    app = GatewayApp(_Node(replica, store))
    url = await nursery.start(serve_gateway, app, "127.0.0.1", 0)
    async with httpx.AsyncClient(timeout=30) as http:
        yield Gw(url, store, http)
    replica.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_put_raw_and_zstd_then_get(gw: Gw) -> None:
    data = b"chunk " * 1000
    first = await gw.send("PUT", f"/v1/blobs/{sha(data)}", data)
    assert first.status_code == 201, first.text
    assert first.json() == {"digest": sha(data), "size": len(data)}
    again = await gw.send(
        "PUT",
        f"/v1/blobs/{sha(data)}",
        zstandard.ZstdCompressor().compress(data),
        headers={"Content-Encoding": "zstd"},
    )
    assert again.status_code == 200, again.text
    assert gw.store.get(sha(data)) == data
    got = await gw.send("GET", f"/v1/blobs/{sha(data)}")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "application/octet-stream"


async def test_a_full_chunk_over_the_json_limit_is_accepted(gw: Gw) -> None:
    data = os.urandom(1024 * 1024)  # incompressible, 8x the JSON limit
    assert len(data) > REQUEST_BODY_BYTES_MAX
    reply = await gw.send("PUT", f"/v1/blobs/{sha(data)}", data)
    assert reply.status_code == 201, reply.text
    assert gw.store.has(sha(data))


async def test_wrong_bytes_are_refused_and_nothing_stored(gw: Gw) -> None:
    claimed = sha(b"the real thing")
    reply = await gw.send("PUT", f"/v1/blobs/{claimed}", b"something else")
    assert reply.status_code == 400
    assert reply.json()["error"] == "digest_mismatch"
    assert not gw.store.has(claimed)
    assert not gw.store.has(sha(b"something else"))


async def test_zip_bomb_is_413_not_memory(gw: Gw) -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(64 * 1024 * 1024))
    assert len(bomb) < 100_000  # 64 MiB of zeros in a few KB
    reply = await gw.send(
        "PUT", f"/v1/blobs/{sha(b'x')}", bomb, headers={"Content-Encoding": "zstd"}
    )
    assert reply.status_code == 413
    assert reply.json()["error"] == "too_large"
    assert str(BLOB_BYTES_MAX) in reply.json()["message"]


async def test_oversized_body_is_413_and_json_routes_keep_their_limit(gw: Gw) -> None:
    big = os.urandom(BLOB_BYTES_MAX + 128 * 1024)
    reply = await gw.send("PUT", f"/v1/blobs/{sha(big)}", big)
    assert reply.status_code == 413
    assert not gw.store.has(sha(big))
    json_body = b'{"digests":[]}' + b" " * REQUEST_BODY_BYTES_MAX
    reply = await gw.send("POST", "/v1/blobs/missing", json_body)
    assert reply.status_code == 413
    reply = await gw.send("POST", "/v1/account/create", b"{}" + b" " * REQUEST_BODY_BYTES_MAX)
    assert reply.status_code == 413


async def test_missing_lists_what_the_store_lacks(gw: Gw) -> None:
    have = gw.store.put(b"held")
    lack = sha(b"not held")
    body = json.dumps({"digests": [have, lack]}).encode()
    reply = await gw.send("POST", "/v1/blobs/missing", body)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"missing": [lack]}


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"digests":"x"}', b'{"digests":["nothex"]}', b"not json"],
)
async def test_missing_refuses_bad_bodies(gw: Gw, body: bytes) -> None:
    reply = await gw.send("POST", "/v1/blobs/missing", body)
    assert reply.status_code == 400, reply.text


async def test_missing_is_bounded(gw: Gw) -> None:
    digests = [sha(str(i).encode()) for i in range(DIGESTS_PER_ASK_MAX + 1)]
    reply = await gw.send("POST", "/v1/blobs/missing", json.dumps({"digests": digests}).encode())
    assert reply.status_code == 413


async def test_blob_routes_need_a_signature(gw: Gw) -> None:
    data = b"x"
    assert (await gw.send("PUT", f"/v1/blobs/{sha(data)}", data, key=None)).status_code == 401
    assert (await gw.send("GET", f"/v1/blobs/{sha(data)}", key=None)).status_code == 401
    assert not gw.store.has(sha(data))
    assert (await gw.send("GET", f"/v1/blobs/{sha(b'none')}")).status_code == 404


# -- the client's upload, through the real gateway -------------------------------------------


def _tree(root: Path) -> None:
    (root / "app").mkdir(parents=True)
    (root / "app" / "server.py").write_text("print('hi')\n")
    (root / "app" / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    (root / "app" / "run.sh").write_text("#!/bin/sh\n")
    (root / "app" / "run.sh").chmod(0o755)
    (root / "app" / "cache").mkdir()
    (root / "app" / "cache" / "junk.pyc").write_bytes(b"junk")
    (root / "notes.txt").write_text("not copied\n")
    (root / ".formignore").write_text("# build junk\n**/cache\n")


async def test_upload_sends_missing_then_nothing_and_the_node_can_materialize(
    gw: Gw, tmp_path: Path
) -> None:
    root = tmp_path / "ctx"
    _tree(root)
    seen: list[tuple[int, int]] = []

    def run() -> Any:
        with GatewayClient(gw.url, ALICE) as client:
            first = upload(client, root, ["app"], progress=lambda s, t: seen.append((s, t)))
            second = upload(client, root, ["app"])
        return first, second

    first, second = await trio.to_thread.run_sync(run)
    manifest, _ = collect(root, ["app"])
    assert first.manifest_digest == manifest.digest
    assert first.files == 3  # cache/ excluded, notes.txt not named
    assert first.chunks_total == 5  # 3 of big.bin, one each for the others
    assert first.chunks_sent == 5
    assert first.bytes_total == sum(f.size for f in manifest.files)
    assert first.bytes_sent == first.bytes_total + len(manifest.to_bytes())
    assert seen[-1][0] == seen[-1][1] == first.bytes_sent
    assert (second.bytes_sent, second.chunks_sent, second.wire_bytes_sent) == (0, 0, 0)
    assert second.manifest_digest == first.manifest_digest
    # What the node holds is the tree, byte for byte and mode for mode.
    held = parse_manifest(gw.store.get(first.manifest_digest))
    dest = tmp_path / "out"
    materialize(held, gw.store, dest)
    assert (dest / "app" / "big.bin").read_bytes() == (root / "app" / "big.bin").read_bytes()
    assert (dest / "app" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert not (dest / "app" / "cache").exists()
    assert not (dest / "notes.txt").exists()


async def test_client_blob_get_and_errors(gw: Gw) -> None:
    def run() -> tuple[bytes, ApiError]:
        with GatewayClient(gw.url, ALICE) as client:
            client.blob_put(sha(b"abc"), b"abc")
            got = client.blob_get(sha(b"abc"))
            try:
                client.blob_put(sha(b"abc"), b"abd")
            except ApiError as exc:
                return got, exc
        raise AssertionError("a wrong blob was accepted")

    got, error = await trio.to_thread.run_sync(run)
    assert got == b"abc"
    assert (error.status, error.code) == (400, "digest_mismatch")


# -- end to end: upload to one running node, another fetches it over libp2p ----------------


@pytest.mark.real
async def test_a_context_uploaded_to_node_a_is_fetched_and_materialized_by_node_b(
    tmp_path: Path,
) -> None:
    from node.config import load_config
    from node.node import Node, NodeSettings, open_home, run_node

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

    root = tmp_path / "ctx"
    _tree(root)
    with trio.fail_after(60):
        async with (
            open_home(settings("a")) as home_a,
            open_home(settings("b")) as home_b,
            trio.open_nursery() as nursery,
        ):
            a: Node = await nursery.start(run_node, home_a)
            b: Node = await nursery.start(run_node, home_b)
            assert a.gateway is not None

            def send() -> Any:
                assert a.gateway is not None
                with GatewayClient(a.gateway.url, ALICE) as client:
                    return upload(client, root, ["app"])

            sent = await trio.to_thread.run_sync(send)
            assert a.blobs.has(sent.manifest_digest)
            await b.transport.connect(a.transport.listen_addrs[0])
            await b.fetch_blob(sent.manifest_digest)
            manifest = parse_manifest(b.blobs.get(sent.manifest_digest))
            for chunk in manifest.chunk_digests():
                await b.fetch_blob(chunk)
            dest = tmp_path / "built"
            await trio.to_thread.run_sync(materialize, manifest, b.blobs, dest)
            for rel in ("app/server.py", "app/big.bin", "app/run.sh"):
                assert (dest / rel).read_bytes() == (root / rel).read_bytes()
            a.stop()
            b.stop()


def _batch(
    blobs: list[bytes], sizes: list[int] | None = None, digests: list[str] | None = None
) -> bytes:
    listed = [
        [digests[i] if digests else sha(b), sizes[i] if sizes else len(b)]
        for i, b in enumerate(blobs)
    ]
    return json.dumps({"blobs": listed}).encode() + b"\n" + b"".join(blobs)


async def test_a_batch_stores_every_blob_and_counts_the_new_ones(gw: Gw) -> None:
    blobs = [f"small file {i}\n".encode() for i in range(300)]
    gw.store.put(blobs[0])  # already held: stored again is a no-op
    body = zstandard.ZstdCompressor().compress(_batch(blobs))
    reply = await gw.send("POST", "/v1/blobs/batch", body, headers={"Content-Encoding": "zstd"})
    assert reply.status_code == 201, reply.text
    assert reply.json() == {"blobs": 300, "stored": 299}
    assert all(gw.store.get(sha(b)) == b for b in blobs)
    assert list((gw.store.root / "tmp").iterdir()) == []


async def test_a_batch_with_one_wrong_blob_stores_nothing(gw: Gw) -> None:
    blobs = [b"first", b"second", b"third"]
    wrong = [sha(b"first"), sha(b"not second"), sha(b"third")]
    reply = await gw.send("POST", "/v1/blobs/batch", _batch(blobs, digests=wrong))
    assert reply.status_code == 400
    assert reply.json()["error"] == "digest_mismatch"
    assert "nothing of this batch is stored" in reply.json()["message"]
    assert not any(gw.store.has(d) for d in (*wrong, sha(b"second")))


async def test_a_batch_whose_sizes_do_not_add_up_or_has_no_header_is_refused(gw: Gw) -> None:
    blobs = [b"aaaa", b"bbbb"]
    short = await gw.send("POST", "/v1/blobs/batch", _batch(blobs, sizes=[4, 3]))
    assert short.status_code == 400
    assert "add up to 7 bytes; 8 follow" in short.json()["message"]
    headless = await gw.send("POST", "/v1/blobs/batch", b"just bytes")
    assert headless.status_code == 400
    assert "JSON line" in headless.json()["message"]
    assert not gw.store.has(sha(b"aaaa"))
