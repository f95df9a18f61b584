"""The build-context manifest: canonical, bounded, and refusing bad paths."""

from __future__ import annotations

import hashlib
import json

import pytest

from node.pack.context import (
    CHUNK_BYTES,
    ContextError,
    ContextLimits,
    FileEntry,
    Manifest,
    check_path,
    chunk_file,
    parse_manifest,
)


def entry(path: str, data: bytes, mode: int = 0o644) -> FileEntry:
    return FileEntry(
        path,
        mode,
        len(data),
        hashlib.sha256(data).hexdigest(),
        tuple(hashlib.sha256(c).hexdigest() for c in chunk_file(data)),
    )


def test_chunk_file_cuts_at_one_mib() -> None:
    data = bytes(range(256)) * (CHUNK_BYTES // 256) * 2 + b"tail"
    chunks = chunk_file(data)
    assert [len(c) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 4]
    assert b"".join(chunks) == data
    assert chunk_file(b"") == []


def test_manifest_round_trips_and_is_sorted() -> None:
    m = Manifest.of([entry("b.txt", b"bee"), entry("a/x.py", b"print(1)\n", 0o755)])
    assert [f.path for f in m.files] == ["a/x.py", "b.txt"]
    raw = m.to_bytes()
    assert parse_manifest(raw) == m
    assert m.digest == hashlib.sha256(raw).hexdigest()
    doc = json.loads(raw)
    assert doc["version"] == 1
    assert doc["chunk_bytes"] == CHUNK_BYTES
    assert doc["files"][0] == {
        "chunks": [hashlib.sha256(b"print(1)\n").hexdigest()],
        "mode": 0o755,
        "path": "a/x.py",
        "sha256": hashlib.sha256(b"print(1)\n").hexdigest(),
        "size": 9,
    }


def test_same_tree_same_digest_other_order() -> None:
    one = Manifest.of([entry("a", b"1"), entry("b", b"2")])
    two = Manifest.of([entry("b", b"2"), entry("a", b"1")])
    assert one.digest == two.digest
    assert one.digest != Manifest.of([entry("a", b"1"), entry("b", b"3")]).digest


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../up", "a/../b", "a//b", "./a", "a\\b", "", "a/\x00", "a/"]
)
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(ContextError):
        check_path(path)
    with pytest.raises(ContextError):
        Manifest.of([entry(path, b"x")])


def test_long_path_refused() -> None:
    with pytest.raises(ContextError, match="over 1024 bytes"):
        check_path("a" * 1025)


def test_non_canonical_refused() -> None:
    m = Manifest.of([entry("a", b"1")])
    pretty = json.dumps(json.loads(m.to_bytes()), indent=1).encode()
    with pytest.raises(ContextError, match="canonical"):
        parse_manifest(pretty)


def test_duplicates_and_unsorted_refused() -> None:
    raw = Manifest((entry("b", b"1"), entry("a", b"2"))).to_bytes()
    with pytest.raises(ContextError, match="sorted"):
        parse_manifest(raw)
    raw = Manifest((entry("a", b"1"), entry("a", b"2"))).to_bytes()
    with pytest.raises(ContextError, match="duplicates"):
        parse_manifest(raw)


def test_size_must_match_chunks() -> None:
    good = entry("a", b"x" * 10)
    bad = FileEntry("a", 0o644, CHUNK_BYTES + 1, good.sha256, good.chunks)
    with pytest.raises(ContextError, match="expected 2"):
        parse_manifest(Manifest((bad,)).to_bytes())


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b"[]",
        b'{"version":2,"chunk_bytes":1048576,"files":[]}',
        b'{"version":1,"chunk_bytes":4096,"files":[]}',
        b'{"chunk_bytes":1048576,"files":[{"path":"a"}],"version":1}',
    ],
)
def test_malformed_refused(doc: bytes) -> None:
    with pytest.raises(ContextError):
        parse_manifest(doc)


def test_limits_files_bytes_manifest() -> None:
    small = ContextLimits(files_max=2, context_bytes_max=10, manifest_bytes_max=10_000)
    with pytest.raises(ContextError, match="limit is 2"):
        Manifest.of([entry(f"f{i}", b"") for i in range(3)], small)
    with pytest.raises(ContextError, match="over 10 bytes"):
        Manifest.of([entry("a", b"x" * 11)], small)
    tiny = ContextLimits(manifest_bytes_max=100)
    raw = Manifest.of([entry("a", b"1"), entry("b", b"2")]).to_bytes()
    with pytest.raises(ContextError, match="limit is 100"):
        parse_manifest(raw, tiny)


def test_bad_mode_refused() -> None:
    with pytest.raises(ContextError, match="mode"):
        Manifest.of([entry("a", b"1", mode=0o100644)])


def test_a_file_cannot_also_be_a_directory() -> None:
    with pytest.raises(ContextError, match="also a directory"):
        Manifest.of([entry("a", b"1"), entry("a/b", b"2")])
