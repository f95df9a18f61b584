"""Build contexts as manifests: which files, their modes, and the digests of their chunks.

Theory of operation
-------------------
A build context is not sent as an archive. It is a *manifest*, a small canonical JSON blob::

    {"version": 1, "chunk_bytes": 1048576,
     "files": [{"path": "app/server.py", "mode": 420, "size": 123,
                "sha256": "<digest of the whole file>", "chunks": ["<sha256 of chunk>", ...]}]}

plus the chunks it names, each a content-addressed blob (``node.pack.blobs``). The manifest's
digest (sha256 of its canonical bytes) is the ``context`` of a ``build.request``: the same tree
gives the same digest on any machine, and a node that already holds a chunk (from an earlier
upload, or another file with the same bytes) never receives it again.

**Canonical form.** Files sorted by path, keys sorted, no whitespace, ASCII-escaped JSON.
``parse_manifest`` refuses anything that is not exactly canonical, so one context has one
digest: a peer cannot make two byte strings that mean the same tree.

**Paths** are relative POSIX paths: no leading ``/``, no ``.`` or ``..`` segment, no empty
segment, no backslash or NUL, at most ``path_bytes_max`` bytes (UTF-8). A file's ``mode`` is its
permission bits (``0o7777`` at most); only regular files are carried.

**Limits** (``ContextLimits``): ``files_max`` files, ``context_bytes_max`` bytes in all files
together, ``manifest_bytes_max`` bytes of manifest. Every size is checked against the chunk
list (``size`` must equal the chunking of that many bytes), so a manifest cannot claim a size
its chunks do not cover.

This module is pure: no file system, no clock. ``chunk_file`` splits bytes; reading a
directory is the client's business (``node.client.context``), writing one the store's
(``node.pack.blobs.materialize``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CHUNK_BYTES",
    "LIMITS",
    "ContextError",
    "ContextLimits",
    "FileEntry",
    "Manifest",
    "check_path",
    "chunk_count",
    "chunk_file",
    "parse_manifest",
    "sha256_hex",
]

CHUNK_BYTES: Final = 1024 * 1024
MANIFEST_VERSION: Final = 1
_HEX: Final = frozenset("0123456789abcdef")


class ContextError(ValueError):
    """A manifest or a path that cannot be a build context; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class ContextLimits:
    files_max: int = 10_000
    context_bytes_max: int = 1024 * 1024 * 1024  # 1 GiB of file bytes in one context
    # 10,000 files with 1 GiB of chunks is ~1,000 chunk digests plus ~10,000 paths: 4 MiB covers it.
    manifest_bytes_max: int = 4 * 1024 * 1024
    path_bytes_max: int = 1024


LIMITS: Final = ContextLimits()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_digest(text: object) -> bool:
    """Whether ``text`` is a lower-case 64-digit sha256 hex digest."""
    return isinstance(text, str) and len(text) == 64 and set(text) <= _HEX


def check_path(path: object, limits: ContextLimits = LIMITS) -> str:
    """``path`` if it is a relative POSIX path a context may carry, else ``ContextError``."""
    if not isinstance(path, str) or not path:
        raise ContextError(f"a context path must be a non-empty string, got {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > limits.path_bytes_max:
        raise ContextError(f"path {path[:80]!r}... is over {limits.path_bytes_max} bytes")
    if path.startswith("/"):
        raise ContextError(f"path {path!r} is absolute; context paths are relative to its root")
    if "\\" in path or "\x00" in path:
        raise ContextError(f"path {path!r} holds a backslash or NUL; use POSIX '/' separators")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ContextError(
                f"path {path!r} has an empty, '.' or '..' segment; give a normalised relative path"
            )
    return path


def chunk_count(size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many chunks a file of ``size`` bytes has (an empty file has none)."""
    return -(-size // chunk_bytes)


def chunk_file(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` cut into ``chunk_bytes`` pieces (the last may be shorter; none for b"")."""
    view = memoryview(data)
    return [bytes(view[i : i + chunk_bytes]) for i in range(0, len(data), chunk_bytes)]


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    mode: int  # permission bits, e.g. 0o644 = 420
    size: int  # bytes
    sha256: str  # of the whole file
    chunks: tuple[str, ...]  # sha256 of each chunk, in order

    def to_json(self) -> dict[str, Any]:
        return {
            "chunks": list(self.chunks),
            "mode": self.mode,
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[FileEntry, ...]
    chunk_bytes: int = CHUNK_BYTES
    version: int = MANIFEST_VERSION

    @staticmethod
    def of(
        files: list[FileEntry] | tuple[FileEntry, ...],
        limits: ContextLimits = LIMITS,
    ) -> Manifest:
        """A checked manifest of ``files`` (any order; sorted here)."""
        manifest = Manifest(tuple(sorted(files, key=lambda f: f.path)))
        _check(manifest, limits)
        return manifest

    def to_bytes(self) -> bytes:
        doc = {
            "chunk_bytes": self.chunk_bytes,
            "files": [f.to_json() for f in self.files],
            "version": self.version,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def digest(self) -> str:
        return sha256_hex(self.to_bytes())

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_digests(self) -> list[str]:
        """Every distinct chunk digest, in first-use order."""
        return list(dict.fromkeys(d for f in self.files for d in f.chunks))


def _check(manifest: Manifest, limits: ContextLimits) -> None:
    if manifest.version != MANIFEST_VERSION:
        raise ContextError(f"manifest version {manifest.version!r}; this node reads version 1")
    if manifest.chunk_bytes != CHUNK_BYTES:
        raise ContextError(f"chunk_bytes is {manifest.chunk_bytes!r}; it must be {CHUNK_BYTES}")
    if len(manifest.files) > limits.files_max:
        raise ContextError(
            f"the context has {len(manifest.files)} files; the limit is {limits.files_max}"
            " (narrow the COPY sources or add a .formignore)"
        )
    total = 0
    previous = ""
    paths = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        check_path(entry.path, limits)
        if entry.path <= previous:
            raise ContextError(f"files must be sorted by path with no duplicates: {entry.path!r}")
        previous = entry.path
        parent = entry.path.rpartition("/")[0]
        while parent:
            if parent in paths:
                raise ContextError(f"{parent!r} is a file and also a directory of {entry.path!r}")
            parent = parent.rpartition("/")[0]
        if type(entry.mode) is not int or not 0 <= entry.mode <= 0o7777:
            raise ContextError(f"{entry.path}: mode {entry.mode!r} is not permission bits 0..4095")
        if type(entry.size) is not int or entry.size < 0:
            raise ContextError(f"{entry.path}: size {entry.size!r} is not a byte count")
        if not is_digest(entry.sha256):
            raise ContextError(f"{entry.path}: sha256 must be 64 lower-case hex digits")
        if len(entry.chunks) != chunk_count(entry.size, manifest.chunk_bytes):
            raise ContextError(
                f"{entry.path}: {len(entry.chunks)} chunks for {entry.size} bytes; "
                f"expected {chunk_count(entry.size, manifest.chunk_bytes)}"
            )
        for digest in entry.chunks:
            if not is_digest(digest):
                raise ContextError(f"{entry.path}: chunk digest {digest!r} is not sha256 hex")
        total += entry.size
        if total > limits.context_bytes_max:
            raise ContextError(
                f"the context is over {limits.context_bytes_max} bytes; "
                "narrow the COPY sources or add a .formignore"
            )
    if len(manifest.to_bytes()) > limits.manifest_bytes_max:
        raise ContextError(f"the manifest is over {limits.manifest_bytes_max} bytes")


def parse_manifest(data: bytes, limits: ContextLimits = LIMITS) -> Manifest:
    """The manifest ``data`` encodes; ``ContextError`` unless it is a canonical, bounded one."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ContextError(f"a manifest is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limits.manifest_bytes_max:
        raise ContextError(
            f"the manifest is {len(data)} bytes; the limit is {limits.manifest_bytes_max}"
        )
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContextError(f"the manifest is not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"chunk_bytes", "files", "version"}:
        raise ContextError("a manifest is an object with exactly chunk_bytes, files and version")
    files = doc["files"]
    if not isinstance(files, list):
        raise ContextError("manifest files must be a list")
    if len(files) > limits.files_max:
        raise ContextError(f"the manifest has {len(files)} files; the limit is {limits.files_max}")
    entries = []
    for i, item in enumerate(files):
        if not isinstance(item, dict) or set(item) != {"chunks", "mode", "path", "sha256", "size"}:
            raise ContextError(
                f"files[{i}] must be an object with exactly chunks, mode, path, sha256, size"
            )
        chunks = item["chunks"]
        if not isinstance(chunks, list):
            raise ContextError(f"files[{i}].chunks must be a list of sha256 digests")
        entries.append(
            FileEntry(item["path"], item["mode"], item["size"], item["sha256"], tuple(chunks))
        )
    manifest = Manifest(tuple(entries), doc["chunk_bytes"], doc["version"])
    _check(manifest, limits)
    if manifest.to_bytes() != data:
        raise ContextError("the manifest is not in canonical form (sorted keys, no spaces)")
    return manifest
