"""The blob store: content-addressed, atomic, verifying; materialize writes a context back."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from node.pack.blobs import BlobError, BlobStore, materialize
from node.pack.context import FileEntry, Manifest, chunk_file


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_get_has_size(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"hello")
    assert digest == sha(b"hello")
    assert store.has(digest)
    assert store.get(digest) == b"hello"
    assert store.size(digest) == 5
    assert store.path(digest).read_bytes() == b"hello"  # raw on disk: QEMU opens it as is
    assert store.put(b"hello", expected=digest) == digest  # idempotent


def test_missing_keeps_order_and_dedups(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    have = store.put(b"a")
    lack1, lack2 = sha(b"b"), sha(b"c")
    assert store.missing([lack2, have, lack1, lack2]) == [lack2, lack1]
    with pytest.raises(BlobError, match="not a blob digest"):
        store.missing(["nope"])


def test_wrong_digest_stores_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    claimed = sha(b"other")
    with pytest.raises(BlobError, match="digest_mismatch"):
        store.put(b"data", expected=claimed)
    assert not store.has(claimed)
    assert not store.has(sha(b"data"))
    assert list((tmp_path / "tmp").iterdir()) == []
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    with pytest.raises(BlobError, match="digest_mismatch"):
        store.put_file(src, expected=claimed)
    assert src.exists()
    assert not store.has(claimed)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_get_missing_is_clear(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(BlobError, match="no blob"):
        store.get(sha(b"x"))
    with pytest.raises(BlobError, match="no blob"):
        store.size(sha(b"x"))
    assert not store.has("../../etc/passwd")


def test_put_file_streams_and_moves(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "s")
    data = os.urandom(3 * 1024 * 1024 + 7)
    src = tmp_path / "img.qcow2"
    src.write_bytes(data)
    digest = store.put_file(src, expected=sha(data), move=True)
    assert digest == sha(data)
    assert not src.exists()
    assert store.path(digest).read_bytes() == data


def test_writer_size_cap(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with store.writer(size_bytes_max=4) as out:
        out.write(b"1234")
        with pytest.raises(BlobError, match="over 4 bytes"):
            out.write(b"5")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_interrupted_write_is_no_blob_and_is_cleaned(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    out = store.writer(sha(b"full"))
    out.write(b"fu")  # the process "dies" here: no commit, no abort
    leftovers = list((tmp_path / "tmp").iterdir())
    assert len(leftovers) == 1
    assert not store.has(sha(b"full"))
    assert not store.has(sha(b"fu"))
    BlobStore(tmp_path)  # reopening drops the leftover
    assert list((tmp_path / "tmp").iterdir()) == []
    out.abort()


def _entry(path: str, data: bytes, mode: int) -> FileEntry:
    return FileEntry(path, mode, len(data), sha(data), tuple(sha(c) for c in chunk_file(data)))


def test_materialize_writes_files_and_modes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    files = {
        "app/run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "big.bin": (os.urandom(2_500_000), 0o600),
    }
    for data, _mode in files.values():
        for chunk in chunk_file(data):
            store.put(chunk)
    manifest = Manifest.of([_entry(p, d, m) for p, (d, m) in files.items()])
    dest = tmp_path / "ctx"
    materialize(manifest, store, dest)
    for path, (data, mode) in files.items():
        assert (dest / path).read_bytes() == data
        assert stat.S_IMODE((dest / path).stat().st_mode) == mode


def test_materialize_refuses_missing_and_bad_chunks(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    manifest = Manifest.of([_entry("a", b"abc", 0o644)])
    with pytest.raises(BlobError, match="lacks 1 chunk"):
        materialize(manifest, store, tmp_path / "d1")
    store.put(b"abc")
    lying = Manifest.of([FileEntry("a", 0o644, 3, sha(b"xyz"), (sha(b"abc"),))])
    with pytest.raises(BlobError, match="the manifest says"):
        materialize(lying, store, tmp_path / "d2")


_CHILD = """
import sys
from pathlib import Path
from node.pack.blobs import BlobStore
store = BlobStore(Path(sys.argv[1]))
out = store.writer(sys.argv[2])
out.write(b"x" * 1_000_000)
out._file.flush()
print("written", flush=True)
sys.stdin.read()  # killed here, mid-blob
"""


def test_kill_9_mid_write_leaves_no_blob(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    digest = sha(b"x" * 2_000_000)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), digest],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"written\n"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
    assert child.returncode == -signal.SIGKILL
    [leftover] = list((tmp_path / "tmp").iterdir())
    assert leftover.stat().st_size == 1_000_000
    store = BlobStore(tmp_path)
    assert not store.has(digest)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert store.put(b"x" * 2_000_000, expected=digest) == digest  # and the store still works


def test_put_many_checks_every_blob_before_storing_any(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    good = [(hashlib.sha256(b).hexdigest(), b) for b in (b"one", b"two", b"three")]
    assert store.put_many(good) == 3
    assert store.put_many(good) == 0  # held already
    fresh = [
        (hashlib.sha256(b"four").hexdigest(), b"four"),
        (hashlib.sha256(b"x").hexdigest(), b"y"),
    ]
    with pytest.raises(BlobError, match="digest_mismatch"):
        store.put_many(fresh)
    assert not store.has(fresh[0][0])
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
