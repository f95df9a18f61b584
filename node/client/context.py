"""The client side of a build context: collect the files COPY names, upload what the node lacks.

Theory of operation
-------------------
``collect(root, copy_sources)`` walks only what the Formfile's COPY lines name (a file, a
directory, or a glob, relative to ``root``), drops what ``root/.formignore`` excludes, and
returns the context's manifest (``node.pack.context``) and a ``ChunkReader`` that reads any of
its chunks back from disk by digest. Files are read twice (hashed here, sent later) rather than
held: a context can be up to 1 GiB. A file that changed in between is refused by the reader
(its chunk no longer hashes to the manifest's digest).

``upload(api, root, copy_sources)`` asks the node which chunk digests, and the manifest's,
it lacks (``POST /v1/blobs/missing``, at most ``DIGESTS_PER_ASK_MAX`` per request), sends each
missing chunk (``PUT /v1/blobs/{digest}``, zstd-compressed when that is smaller, signed like
every request; a few in flight at once), then the manifest, last, so a node never holds a manifest whose chunks it
lacks because of us. A second upload of the same tree sends nothing.

**What is carried.** Regular files, with their permission bits. A symlink is followed when its
target is a regular file inside ``root`` (the file's bytes are carried under the link's path);
a link that leaves ``root``, or points at a directory, is refused with its path. Sockets,
FIFOs and devices are refused too. Empty directories are not carried.

**.formignore** (one pattern a line, like ``.dockerignore``):

* blank lines and lines starting with ``#`` are ignored; surrounding spaces are trimmed;
* a pattern is matched against the path relative to ``root`` (a leading ``/`` or ``./`` is
  dropped, as is a trailing ``/``); a pattern that matches a directory excludes all under it;
* ``*`` matches any run of characters but ``/``, ``?`` one character but ``/``, ``[abc]`` and
  ``[!abc]`` a character class, ``**`` any number of directories (``**/x``, ``a/**``,
  ``a/**/b``), ``\\`` escapes the next character;
* ``!pattern`` re-includes what an earlier pattern excluded; the last matching line wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import zstandard

from node.client.api import ClientError
from node.pack.context import (
    CHUNK_BYTES,
    LIMITS,
    ContextError,
    ContextLimits,
    FileEntry,
    Manifest,
    check_path,
    sha256_hex,
)

__all__ = [
    "DIGESTS_PER_ASK_MAX",
    "IGNORE_FILE",
    "UPLOADS_IN_FLIGHT_DEFAULT",
    "ChunkReader",
    "ContextUploadError",
    "IgnoreRules",
    "UploadResult",
    "collect",
    "upload",
]

IGNORE_FILE: Final = ".formignore"
DIGESTS_PER_ASK_MAX: Final = 1000  # the gateway's bound (node.gateway.routes.blobs)
# 8 PUTs in flight: enough to overlap round trips and the node's fsyncs, few enough not to
# crowd a gateway's in-flight bound (512) when several clients upload at once.
UPLOADS_IN_FLIGHT_DEFAULT: Final = 8
# POST /blobs/batch takes up to 512 blobs and 4 MiB of their bytes (node.gateway.routes.blobs);
# the client stays well inside, and sends chunks over 256 KiB one per PUT.
BATCH_ITEMS_MAX: Final = 256
BATCH_BYTES_MAX: Final = 3 * 1024 * 1024
BATCH_ITEM_BYTES_MAX: Final = 256 * 1024
_ZSTD_LEVEL: Final = 3
_GLOB_CHARS: Final = frozenset("*?[")
_IGNORE_FILE_BYTES_MAX: Final = 1024 * 1024


class ContextUploadError(ClientError):
    """The context cannot be collected or sent; the message names the path and the fix."""


# -- .formignore ----------------------------------------------------------------------------


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            at_start = i == 0 or pattern[i - 1] == "/"
            after = i + 2
            if at_start and after < n and pattern[after] == "/":
                out.append("(?:[^/]*/)*")  # "**/": zero or more directories
                i = after + 1
                continue
            if at_start and after == n:
                out.append(".*")  # trailing "**": everything below
                i = after
                continue
            out.append(".*")
            i = after
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern.startswith("[!", i) else i + 1)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class IgnoreRules:
    """Compiled ``.formignore`` lines: (negated, regex), in file order."""

    rules: tuple[tuple[bool, re.Pattern[str]], ...] = ()

    @staticmethod
    def parse(text: str) -> IgnoreRules:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:].strip()
            while line.startswith(("./", "/")):
                line = line[2:] if line.startswith("./") else line[1:]
            line = line.rstrip("/")
            if not line:
                continue
            rules.append((negated, re.compile(_glob_regex(line))))
        return IgnoreRules(tuple(rules))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative, POSIX) is left out of the context."""
        parts = path.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        verdict = False
        for negated, regex in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                verdict = not negated
        return verdict


def _load_ignore(root: Path) -> IgnoreRules:
    path = root / IGNORE_FILE
    try:
        if path.stat().st_size > _IGNORE_FILE_BYTES_MAX:
            raise ContextUploadError(f"{path} is over {_IGNORE_FILE_BYTES_MAX} bytes")
        return IgnoreRules.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return IgnoreRules()
    except (OSError, UnicodeDecodeError) as exc:
        raise ContextUploadError(f"cannot read {path}: {exc}") from None


# -- collecting -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Piece:
    path: Path  # absolute, the real file
    offset: int
    length: int


class ChunkReader:
    """Reads a chunk of the collected context back from disk by its digest."""

    def __init__(self, pieces: dict[str, _Piece]) -> None:
        self._pieces = pieces

    def size(self, digest: str) -> int:
        return self._pieces[digest].length

    def __call__(self, digest: str) -> bytes:
        piece = self._pieces[digest]
        with piece.path.open("rb") as source:
            source.seek(piece.offset)
            data = source.read(piece.length)
        if sha256_hex(data) != digest:
            raise ContextUploadError(
                f"{piece.path} changed while the context was being sent; run the build again"
            )
        return data


def _relative(root: Path, source: str) -> str:
    text = source.strip()
    while text.startswith("./"):
        text = text[2:]
    text = text.rstrip("/")
    if text in ("", "."):
        return ""
    if text.startswith("/") or ".." in text.split("/"):
        raise ContextUploadError(
            f"COPY source {source!r} is outside the context {root}; name a path inside it"
        )
    return text


def _sources(root: Path, copy_sources: Sequence[str]) -> list[str]:
    """Each COPY source as a root-relative path ("" for the root), globs expanded."""
    found: list[str] = []
    for source in copy_sources:
        rel = _relative(root, source)
        if _GLOB_CHARS & set(rel):
            matches = sorted(p.relative_to(root).as_posix() for p in root.glob(rel))
            if not matches:
                raise ContextUploadError(f"COPY source {source!r} matches nothing in {root}")
            found.extend(matches)
        else:
            if not os.path.lexists(root / rel):
                raise ContextUploadError(f"COPY source {source!r}: no {root / rel}")
            found.append(rel)
    return found


def _regular(root_real: Path, path: Path, rel: str) -> os.stat_result:
    """The stat of the regular file ``path`` names (a link is followed if it stays inside)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        target = path.resolve()
        if not target.exists():
            raise ContextUploadError(f"{rel} is a symlink to {target}, which does not exist")
        if not target.is_relative_to(root_real):
            raise ContextUploadError(
                f"{rel} is a symlink to {target}, outside the context {root_real}; "
                "copy the file into the context or drop the link"
            )
        st = os.stat(target)
        if stat.S_ISDIR(st.st_mode):
            raise ContextUploadError(
                f"{rel} is a symlink to a directory; name the directory itself in COPY"
            )
    if not stat.S_ISREG(st.st_mode):
        raise ContextUploadError(f"{rel} is not a regular file (socket, FIFO or device)")
    return st


def collect(
    root: Path, copy_sources: Sequence[str], *, limits: ContextLimits = LIMITS
) -> tuple[Manifest, ChunkReader]:
    """The manifest of the files ``copy_sources`` name under ``root``, and a chunk reader."""
    root = Path(root)
    if not root.is_dir():
        raise ContextUploadError(f"{root} is not a directory (the build context)")
    root_real = root.resolve()
    ignore = _load_ignore(root)
    files: dict[str, Path] = {}

    def add(rel: str) -> None:
        if rel in files or ignore.excluded(rel):
            return
        try:
            check_path(rel, limits)
        except ContextError as exc:
            raise ContextUploadError(str(exc)) from None
        files[rel] = root / rel
        if len(files) > limits.files_max:
            raise ContextUploadError(
                f"the COPY sources hold over {limits.files_max} files; "
                f"narrow them or exclude some in {IGNORE_FILE}"
            )

    prunable = not any(negated for negated, _ in ignore.rules)
    for rel in _sources(root, copy_sources):
        path = root / rel if rel else root
        if path.is_symlink() or not path.is_dir():
            if rel and ignore.excluded(rel):
                raise ContextUploadError(f"COPY source {rel!r} is excluded by {IGNORE_FILE}")
            add(rel)
            continue
        if path.resolve() != root_real and not path.resolve().is_relative_to(root_real):
            raise ContextUploadError(f"{rel} leaves the context {root_real}")
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            base = Path(dirpath).relative_to(root).as_posix()
            prefix = "" if base == "." else base + "/"
            # Excluded directories are pruned unless a "!" rule might re-include below them.
            dirnames[:] = sorted(
                d for d in dirnames if not (prunable and ignore.excluded(prefix + d))
            )
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)) and not ignore.excluded(
                    prefix + name
                ):
                    _regular(root_real, Path(dirpath) / name, prefix + name)  # raises
            for name in sorted(filenames):
                add(prefix + name)

    entries: list[FileEntry] = []
    pieces: dict[str, _Piece] = {}
    total = 0
    for rel in sorted(files):
        st = _regular(root_real, files[rel], rel)
        total += st.st_size
        if total > limits.context_bytes_max:
            raise ContextUploadError(
                f"the context is over {limits.context_bytes_max} bytes; "
                f"narrow the COPY sources or exclude files in {IGNORE_FILE}"
            )
        real = files[rel].resolve()
        whole = hashlib.sha256()
        chunks: list[str] = []
        offset = 0
        with real.open("rb") as source:
            while data := source.read(CHUNK_BYTES):
                whole.update(data)
                digest = sha256_hex(data)
                chunks.append(digest)
                pieces.setdefault(digest, _Piece(real, offset, len(data)))
                offset += len(data)
        entries.append(
            FileEntry(rel, stat.S_IMODE(st.st_mode), offset, whole.hexdigest(), tuple(chunks))
        )
    try:
        manifest = Manifest.of(entries, limits)
    except ContextError as exc:
        raise ContextUploadError(str(exc)) from None
    return manifest, ChunkReader(pieces)


# -- uploading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadResult:
    manifest_digest: str  # the build.request's "context"
    files: int
    bytes_total: int  # file bytes in the context
    bytes_sent: int  # raw bytes of the chunks (and manifest) sent: 0 when the node had all
    wire_bytes_sent: int  # bytes on the wire (after zstd)
    chunks_total: int  # distinct chunks
    chunks_sent: int


def _encoded(data: bytes, compressor: zstandard.ZstdCompressor) -> tuple[bytes, str | None]:
    packed = compressor.compress(data)
    return (packed, "zstd") if len(packed) < len(data) else (data, None)


def upload(
    api: Any,
    root: Path,
    copy_sources: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
    *,
    limits: ContextLimits = LIMITS,
    concurrency: int = UPLOADS_IN_FLIGHT_DEFAULT,
) -> UploadResult:
    """Send the context to the node behind ``api`` (a ``GatewayClient``); see the module doc.

    ``progress(bytes_sent, bytes_to_send)`` is called after each blob sent (and once at the
    start), where ``bytes_to_send`` counts only what the node lacks. ``concurrency`` chunk
    PUTs are in flight at once (``api`` must be thread-safe, as ``GatewayClient`` is); the
    first failure stops the upload and is raised.
    """
    manifest, read = collect(root, copy_sources, limits=limits)
    manifest_bytes = manifest.to_bytes()
    chunk_digests = manifest.chunk_digests()
    asked = [*chunk_digests, manifest.digest]
    missing: list[str] = []
    for i in range(0, len(asked), DIGESTS_PER_ASK_MAX):
        missing.extend(api.blobs_missing(asked[i : i + DIGESTS_PER_ASK_MAX]))
    lacking = set(missing)
    to_send = [d for d in chunk_digests if d in lacking]
    send_manifest = manifest.digest in lacking
    bytes_to_send = sum(read.size(d) for d in to_send) + (
        len(manifest_bytes) if send_manifest else 0
    )
    sent = 0
    wire = 0
    if progress is not None:
        progress(0, bytes_to_send)

    def put_chunk(digest: str) -> tuple[int, int]:
        # One compressor per call: zstandard contexts must not be shared across threads.
        data = read(digest)
        body, encoding = _encoded(data, zstandard.ZstdCompressor(level=_ZSTD_LEVEL))
        api.blob_put(digest, body, encoding=encoding)
        return len(data), len(body)

    def put_batch(digests: list[str]) -> tuple[int, int]:
        blobs = [(d, read(d)) for d in digests]
        head = json.dumps({"blobs": [[d, len(b)] for d, b in blobs]}, separators=(",", ":"))
        raw = head.encode() + b"\n" + b"".join(b for _, b in blobs)
        body, encoding = _encoded(raw, zstandard.ZstdCompressor(level=_ZSTD_LEVEL))
        api.blob_batch(body, encoding=encoding)
        return sum(len(b) for _, b in blobs), len(body)

    # Small chunks (small files) go many to a request: the node's cost is per request, not
    # per byte. Large chunks go one per PUT.
    jobs: list[Callable[[], tuple[int, int]]] = []
    batch: list[str] = []
    batch_bytes = 0
    for digest in to_send:
        size = read.size(digest)
        if size > BATCH_ITEM_BYTES_MAX:
            jobs.append(partial(put_chunk, digest))
            continue
        if batch and (len(batch) >= BATCH_ITEMS_MAX or batch_bytes + size > BATCH_BYTES_MAX):
            jobs.append(partial(put_batch, batch))
            batch, batch_bytes = [], 0
        batch.append(digest)
        batch_bytes += size
    if batch:
        jobs.append(partial(put_batch, batch))

    # Each PUT costs a round trip and the node's fsync; a few in flight overlap them. Reads
    # happen in the workers, so memory stays at ``concurrency`` chunks whatever the context.
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        pending = [pool.submit(job) for job in jobs]
        try:
            for done in as_completed(pending):
                raw, packed = done.result()
                sent += raw
                wire += packed
                if progress is not None:
                    progress(sent, bytes_to_send)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    if send_manifest:  # last: the node then holds every chunk the manifest names
        body, encoding = _encoded(manifest_bytes, compressor)
        api.blob_put(manifest.digest, body, encoding=encoding)
        sent += len(manifest_bytes)
        wire += len(body)
        if progress is not None:
            progress(sent, bytes_to_send)
    return UploadResult(
        manifest_digest=manifest.digest,
        files=len(manifest.files),
        bytes_total=manifest.bytes_total,
        bytes_sent=sent,
        wire_bytes_sent=wire,
        chunks_total=len(chunk_digests),
        chunks_sent=len(to_send),
    )
