"""A content-addressed blob store on disk, and writing a build context out of it.

Theory of operation
-------------------
A blob is named by the sha256 of its raw bytes (lower-case hex). ``BlobStore(root)`` keeps each
blob as a plain file ``root/<first two digits>/<digest>``, uncompressed, so QEMU can open an
image by its path; compression (zstd) is a wire matter only.

**A blob is there or it is not.** Every write goes to a temporary file in ``root/tmp`` (same
file system), hashed while it is written, fsynced, then renamed onto its name and the directory
fsynced. The digest is checked before the rename: bytes that do not hash to what was expected
never get a name. A crash (even ``kill -9``) leaves at most a temporary file, which never counts
as a blob and is removed when a store is next opened on that root.

**Streaming.** ``put_file`` and ``writer`` never hold a blob in memory, so a ~500 MB image goes
through in ``_COPY_BYTES`` pieces; ``put``/``get`` take and return bytes, for chunks.

``materialize(manifest, store, dest)`` writes a context's files under ``dest``: each file is
the concatenation of its chunks, checked against the file's sha256 and size, created with its
mode, and a path that would leave ``dest`` is refused (``parse_manifest`` already refuses
``..``; this is a second line).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from node.pack.context import Manifest, is_digest

__all__ = ["BlobError", "BlobStore", "BlobWriter", "materialize"]

_COPY_BYTES: Final = 1024 * 1024
_TMP_DIR: Final = "tmp"


class BlobError(Exception):
    """A blob is missing, or bytes do not match the digest they were given as."""


def _check_digest(digest: str) -> str:
    if not is_digest(digest):
        raise BlobError(f"{digest!r} is not a blob digest (64 lower-case hex digits of sha256)")
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class BlobWriter:
    """An open temporary file that becomes a blob on ``commit`` if its bytes hash right."""

    def __init__(self, store: BlobStore, expected: str | None, size_bytes_max: int | None) -> None:
        self._store = store
        self.expected = _check_digest(expected) if expected is not None else None
        self.size_bytes_max = size_bytes_max
        self.size = 0
        self._hash = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=store.root / _TMP_DIR, prefix="blob-")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._done = False

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size_bytes_max is not None and self.size > self.size_bytes_max:
            self.abort()
            raise BlobError(f"the blob is over {self.size_bytes_max} bytes")
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> str:
        """Name the blob; ``BlobError`` (and nothing stored) if it does not hash to ``expected``."""
        digest = self._hash.hexdigest()
        if self.expected is not None and digest != self.expected:
            self.abort()
            raise BlobError(
                f"digest_mismatch: the bytes hash to {digest}, not {self.expected} as claimed"
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.path(digest)
        final.parent.mkdir(exist_ok=True)
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, final)
        _fsync_dir(final.parent)
        self._done = True
        return digest

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()  # a no-op after commit


class BlobStore:
    """Blobs under ``root`` by sha256 of their raw bytes (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        tmp = self.root / _TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        # Leftovers of writes a crash interrupted: never blobs, so dropped on open.
        for leftover in tmp.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return is_digest(digest) and self.path(digest).is_file()

    def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests of ``digests`` this store lacks, each once, in the order given."""
        return [d for d in dict.fromkeys(digests) if not self.has(_check_digest(d))]

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobError(f"no blob {digest}") from None

    def get(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobError(f"no blob {digest}") from None

    def writer(self, expected: str | None = None, size_bytes_max: int | None = None) -> BlobWriter:
        """A streaming write; use as a context manager and call ``commit()``."""
        return BlobWriter(self, expected, size_bytes_max)

    def put(self, data: bytes, expected: str | None = None) -> str:
        """Store ``data``; its digest. ``BlobError`` if it does not hash to ``expected``."""
        digest = hashlib.sha256(data).hexdigest()
        if expected is not None and digest != _check_digest(expected):
            raise BlobError(f"digest_mismatch: the bytes hash to {digest}, not {expected}")
        if self.has(digest):
            return digest
        with self.writer(digest) as out:
            out.write(bytes(data))
            return out.commit()

    def put_many(self, blobs: Sequence[tuple[str, bytes]]) -> int:
        """Store several small blobs, each checked against its digest first (one wrong digest:
        ``BlobError`` and nothing stored); how many were new. Cheaper than one ``put`` each:
        every file is written before any is fsynced, so one journal commit covers most of
        them, and each directory is fsynced once."""
        fresh: list[tuple[str, bytes]] = []
        for digest, data in blobs:
            actual = hashlib.sha256(data).hexdigest()
            if actual != _check_digest(digest):
                raise BlobError(f"digest_mismatch: bytes hash to {actual}, not {digest}")
            if not self.has(digest) and digest not in {d for d, _ in fresh}:
                fresh.append((digest, data))
        written: list[tuple[str, Path, int]] = []
        try:
            for digest, data in fresh:
                fd, name = tempfile.mkstemp(dir=self.root / _TMP_DIR, prefix="blob-")
                written.append((digest, Path(name), fd))
                _write_all(fd, data)
            for _, _, fd in written:
                os.fsync(fd)
        except BaseException:
            for _, tmp, _ in written:
                tmp.unlink(missing_ok=True)
            raise
        finally:
            for _, _, fd in written:
                os.close(fd)
        parents = set()
        for digest, tmp, _ in written:
            final = self.path(digest)
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
            parents.add(final.parent)
        for parent in parents:
            _fsync_dir(parent)
        return len(written)

    def put_file(self, path: Path, expected: str | None = None, move: bool = False) -> str:
        """Store the file at ``path`` (streamed); with ``move`` the source is removed after."""
        path = Path(path)
        with self.writer(expected) as out, path.open("rb") as source:
            while piece := source.read(_COPY_BYTES):
                out.write(piece)
            digest = out.commit()
        if move:
            path.unlink()
        return digest


def materialize(manifest: Manifest, store: BlobStore, dest: Path) -> None:
    """Write the files of ``manifest`` under ``dest`` from ``store``'s chunks.

    ``BlobError`` names the first chunk the store lacks or the file whose bytes do not match
    its sha256; files already written stay (``dest`` is a scratch directory).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    lacking = store.missing(manifest.chunk_digests())
    if lacking:
        raise BlobError(
            f"the store lacks {len(lacking)} chunk(s) of context {manifest.digest}, e.g. {lacking[0]}"
        )
    for entry in manifest.files:
        target = (dest / entry.path).resolve()
        if not target.is_relative_to(base):
            raise BlobError(f"{entry.path} would be written outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with target.open("wb") as out:
            for chunk in entry.chunks:
                with store.path(chunk).open("rb") as source:
                    while piece := source.read(_COPY_BYTES):
                        digest.update(piece)
                        size += len(piece)
                        out.write(piece)
        if digest.hexdigest() != entry.sha256 or size != entry.size:
            raise BlobError(
                f"{entry.path}: its chunks give {size} bytes hashing to {digest.hexdigest()}; "
                f"the manifest says {entry.size} bytes, {entry.sha256}"
            )
        os.chmod(target, entry.mode)
        if (target.stat().st_mode & 0o7777) != entry.mode:
            raise BlobError(f"{entry.path}: could not set mode {oct(entry.mode)}")
