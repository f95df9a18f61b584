"""Collecting a build context: COPY sources only, .formignore, symlinks, limits."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import zstandard

from node.client.api import ApiError
from node.client.context import ContextUploadError, IgnoreRules, collect, upload
from node.pack.context import ContextLimits, sha256_hex


def paths(root: Path, sources: list[str]) -> list[str]:
    return [f.path for f in collect(root, sources)[0].files]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "ctx"
    for rel, text in {
        "app/main.py": "main",
        "app/lib/util.py": "util",
        "app/lib/util.pyc": "bytecode",
        "app/node_modules/x/index.js": "js",
        "app/node_modules/keep/index.js": "keep",
        "README.md": "readme",
        "data/a.csv": "1,2",
        "data/b.csv": "3,4",
    }.items():
        (r / rel).parent.mkdir(parents=True, exist_ok=True)
        (r / rel).write_text(text)
    return r


def test_only_named_sources_are_taken(root: Path) -> None:
    assert paths(root, ["app/main.py", "data"]) == ["app/main.py", "data/a.csv", "data/b.csv"]
    assert paths(root, ["./README.md", "README.md"]) == ["README.md"]
    assert paths(root, ["data/*.csv"]) == ["data/a.csv", "data/b.csv"]
    assert len(paths(root, ["."])) == 8


def test_formignore_globs_doublestar_and_negation(root: Path) -> None:
    (root / ".formignore").write_text(
        "# comment\n\n**/*.pyc\n**/node_modules\n!app/node_modules/keep\n/README.md\n"
    )
    assert paths(root, ["."]) == [
        ".formignore",
        "app/lib/util.py",
        "app/main.py",
        "app/node_modules/keep/index.js",
        "data/a.csv",
        "data/b.csv",
    ]


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        ("*.pyc", "a.pyc", True),
        ("*.pyc", "dir/a.pyc", False),  # '*' does not cross '/'
        ("**/*.pyc", "dir/sub/a.pyc", True),
        ("**/*.pyc", "a.pyc", True),
        ("build/", "build/out/x", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**", "a/x/y", True),
        ("a/**", "ab/x", False),
        ("file?.txt", "file1.txt", True),
        ("file[0-9].txt", "filex.txt", False),
        ("file[!0-9].txt", "filex.txt", True),
        ("\\#hash", "#hash", True),
    ],
)
def test_ignore_patterns(pattern: str, path: str, excluded: bool) -> None:
    assert IgnoreRules.parse(pattern).excluded(path) is excluded


def test_an_excluded_source_is_named(root: Path) -> None:
    (root / ".formignore").write_text("README.md\n")
    with pytest.raises(ContextUploadError, match=r"excluded by \.formignore"):
        collect(root, ["README.md"])


def test_missing_and_escaping_sources_refused(root: Path) -> None:
    with pytest.raises(ContextUploadError, match="no "):
        collect(root, ["nope.txt"])
    with pytest.raises(ContextUploadError, match="outside the context"):
        collect(root, ["../etc/passwd"])
    with pytest.raises(ContextUploadError, match="outside the context"):
        collect(root, ["/etc/passwd"])
    with pytest.raises(ContextUploadError, match="matches nothing"):
        collect(root, ["*.nothing"])


def test_symlinks_inside_are_followed_escaping_ones_refused(root: Path, tmp_path: Path) -> None:
    (root / "app" / "link.py").symlink_to("main.py")
    manifest, read = collect(root, ["app/link.py"])
    [entry] = manifest.files
    assert entry.sha256 == sha256_hex(b"main")
    assert read(entry.chunks[0]) == b"main"
    (tmp_path / "secret").write_text("key")
    (root / "data" / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(ContextUploadError, match="outside the context"):
        collect(root, ["data"])
    os.unlink(root / "data" / "leak")
    (root / "data" / "dirlink").symlink_to(tmp_path)
    with pytest.raises(ContextUploadError, match="outside the context"):
        collect(root, ["data"])


def test_special_files_refused(root: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(root / "data" / "sock"))
        with pytest.raises(ContextUploadError, match="not a regular file"):
            collect(root, ["data"])
    finally:
        server.close()


def test_modes_and_chunks(root: Path) -> None:
    big = root / "data" / "big.bin"
    big.write_bytes(os.urandom(1024 * 1024 + 1))
    big.chmod(0o600)
    manifest, read = collect(root, ["data/big.bin"])
    [entry] = manifest.files
    assert entry.mode == 0o600
    assert len(entry.chunks) == 2
    assert read(entry.chunks[0]) + read(entry.chunks[1]) == big.read_bytes()
    big.write_bytes(b"changed")
    with pytest.raises(ContextUploadError, match="changed while"):
        read(entry.chunks[0])


def test_limits_refuse_early(root: Path) -> None:
    with pytest.raises(ContextUploadError, match="over 2 files"):
        collect(root, ["."], limits=ContextLimits(files_max=2))
    with pytest.raises(ContextUploadError, match="over 5 bytes"):
        collect(root, ["."], limits=ContextLimits(context_bytes_max=5))


def test_same_tree_same_digest(root: Path, tmp_path: Path) -> None:
    one = collect(root, ["app", "data"])[0].digest
    assert collect(root, ["data", "app/"])[0].digest == one
    (root / "data" / "a.csv").write_text("changed")
    assert collect(root, ["app", "data"])[0].digest != one


class _FlakyApi:
    """Lacks everything; refuses one chunk's PUT."""

    def __init__(self, refuse: str) -> None:
        self.refuse = refuse
        self.put: list[str] = []

    def blobs_missing(self, digests: list[str]) -> list[str]:
        return list(digests)

    def blob_put(self, digest: str, body: bytes, *, encoding: str | None = None) -> None:
        if digest == self.refuse:
            raise ApiError(400, "digest_mismatch", "refused")
        self.put.append(digest)

    def blob_batch(self, body: bytes, *, encoding: str | None = None) -> None:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(body) if encoding else body
        digests = [d for d, _ in json.loads(raw.split(b"\n", 1)[0])["blobs"]]
        if self.refuse in digests:
            raise ApiError(400, "digest_mismatch", "refused")
        self.put.extend(digests)


def test_a_failed_chunk_stops_the_upload_before_the_manifest(root: Path) -> None:
    manifest, _ = collect(root, ["app", "data"])
    api = _FlakyApi(refuse=manifest.files[0].chunks[0])
    with pytest.raises(ApiError, match="refused"):
        upload(api, root, ["app", "data"], concurrency=2)
    assert manifest.digest not in api.put
    assert len(api.put) < len(manifest.chunk_digests())
