"""The node's durable op log: one SQLite file per data directory.

Long on purpose: the on-disk format, its validation on open and the store that writes it are read together when recovery is in question.

Theory of operation
-------------------
**What lives in the file.** ``<data_dir>/state.db`` holds three tables. ``ops`` is the
append-only log: one row per signed op, numbered by a local sequence number ``seq`` and unique by
op id. A row keeps what was signed (``body``, zstd-compressed when larger than 1 KiB, and
``sig``) plus copies of ``author``, ``kind`` and ``wall_ms`` for inspection with the ``sqlite3``
shell; an op read back is rebuilt from ``body`` alone and its id recomputed, so a copied column
can never disagree with what is replayed. ``snapshots`` holds the newest two serialized states,
zstd-compressed, each with the ``seq`` it covers and the sha256 of its uncompressed bytes.
``meta`` records the format version, the network id and the software that created the file.
``seq`` is local: it orders this replica's log, is never reused, and never leaves the node
(peers name ops by id).

**Durability contract.** ``append`` and ``put_snapshot`` return only after their transaction is
committed and fsync'd: WAL mode with ``synchronous=FULL``, which fsyncs the WAL at every commit.
An op acknowledged to a client or a peer therefore survives a process crash, a kernel panic and
a power cut (on a disk that honours fsync). ``NORMAL`` would fsync only at checkpoints: still
crash-consistent, but a power cut could silently drop commits we had already acknowledged,
and a peer that was told "stored" would never resend them.

**Format and versioning.** The file is recognised by ``PRAGMA application_id``
(``APPLICATION_ID``) and its layout by ``PRAGMA user_version`` (``SCHEMA_VERSION``, mirrored in
``meta``). ``Store.open`` checks, in order: that the file is SQLite and ours, that its format is
not newer than this software, the network id, ``PRAGMA quick_check``, the checksums of the
stored snapshots and (unless ``verify_ops=False``) that every op row's id is the EIP-191 hash of
its body. The checks run on a read-only connection (``immutable`` when no WAL is present), so a
refused file is left exactly as it was: no WAL replay, no checkpoint, no new side files after a
clean shutdown. Rows are checked again as they are read, so even with ``verify_ops=False`` no
corrupt op is replayed or served. A future format will be migrated in ``open``, inside one
transaction, from the ``user_version`` found.

Threads: every method may be called from any thread (the Trio node uses worker threads); calls
are serialized by a lock. ``iter_ops`` reads in pages and holds neither the lock nor a read
transaction between pages, so a long replay does not block appends or checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

import zstandard

from node import __version__
from node.identity.keys import eip191_hash
from node.ledger.op import OP_BODY_BYTES_MAX, Op

__all__ = [
    "APPLICATION_ID",
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "CorruptStore",
    "ForeignStore",
    "NewerFormat",
    "Store",
    "StoreError",
    "StoreMissing",
    "WrongNetwork",
]

DB_FILENAME: Final = "state.db"
# "FmNd": marks the file as ours, so `file state.db` and our own open can tell it apart.
APPLICATION_ID: Final = 0x466D4E64
SCHEMA_VERSION: Final = 1
CREATED_BY: Final = f"formation-node {__version__}"

# Bodies at or under this size are stored raw: zstd frames cost ~10 bytes of overhead and
# a typical op (~200 B of JSON with a hex author) barely compresses.
COMPRESS_BODY_BYTES_MIN: Final = 1024
ZSTD_LEVEL: Final = 3
SNAPSHOTS_KEPT: Final = 2
BUSY_TIMEOUT_MS: Final = 5000
# Bounds the WAL file after a checkpoint, so one burst does not leave a huge file behind.
JOURNAL_SIZE_LIMIT_BYTES: Final = 64 * 1024 * 1024
_PAGE_ROWS: Final = 256
_IN_CHUNK: Final = 500  # ids per `IN (...)`: well under SQLite's oldest variable limit (999)
_CODEC_RAW: Final = 0
_CODEC_ZSTD: Final = 1
_META_KEYS: Final = frozenset({"format_version", "network", "created_by"})

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
    """CREATE TABLE ops (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id BLOB NOT NULL UNIQUE CHECK (length(id) = 32),
        codec INTEGER NOT NULL CHECK (codec IN (0, 1)),
        body BLOB NOT NULL,
        sig BLOB NOT NULL CHECK (length(sig) = 65),
        wall_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        author TEXT NOT NULL
    ) STRICT""",
    """CREATE TABLE snapshots (
        upto_seq INTEGER PRIMARY KEY,
        blob BLOB NOT NULL,
        sha256 BLOB NOT NULL CHECK (length(sha256) = 32),
        raw_bytes INTEGER NOT NULL
    ) STRICT""",
)


class StoreError(Exception):
    """The store cannot be used as asked. The message names the file, the problem and the fix."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class StoreMissing(StoreError):
    """No store exists and ``create=False`` was given."""


class ForeignStore(StoreError):
    """The file is not a formation-node store (another application's SQLite, or not SQLite)."""


class NewerFormat(StoreError):
    """The store was written by newer software, in a format this version cannot read."""


class CorruptStore(StoreError):
    """The store fails an integrity check: SQLite structure, a snapshot checksum or an op id."""


class WrongNetwork(StoreError):
    """The store holds another network's ops."""


def _corrupt(path: Path, detail: str) -> CorruptStore:
    return CorruptStore(
        path,
        f"the store is corrupt ({detail}); move the file aside and restore it from a backup,"
        " or start with an empty data directory and resync from peers",
    )


def _inflate(
    path: Path,
    what: str,
    data: bytes,
    raw_bytes_max: int,
    dctx: zstandard.ZstdDecompressor | None = None,
) -> bytes:
    # The frame header states the content size; checking it first means a corrupt header
    # cannot make us allocate an absurd buffer.
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise _corrupt(path, f"{what} is not a zstd frame: {exc}") from None
    if not 0 <= size <= raw_bytes_max:
        raise _corrupt(path, f"{what} claims {size} uncompressed bytes (limit {raw_bytes_max})")
    try:
        # A context costs ~8 µs to make; callers that decompress many rows pass their own.
        return bytes((dctx or zstandard.ZstdDecompressor()).decompress(data))
    except zstandard.ZstdError as exc:
        raise _corrupt(path, f"{what} does not decompress: {exc}") from None


_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26


def _sqlite_failure(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    """Map a SQLite error met while reading our file: damage is corruption, the rest is not."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # primary code of an extended one
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return _corrupt(path, f"SQLite: {exc}")
    # Locked, busy, I/O or permission errors say nothing about the file's contents.
    return StoreError(
        path,
        f"cannot read the store (SQLite: {exc}); check that no other process holds it and"
        " that the disk and permissions are sound, then retry",
    )


def _fsync_dir(directory: Path) -> None:
    # A new file is only durable once the directory entry naming it is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_blank(conn: sqlite3.Connection) -> bool:
    """An empty SQLite file: what a crash during creation leaves. Safe to initialize."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    return bool(app_id == 0 and user_version == 0 and tables == 0)


def _read_meta(path: Path, conn: sqlite3.Connection) -> dict[str, str]:
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.OperationalError as exc:
        raise _corrupt(path, f"the meta table is unreadable: {exc}") from None
    meta = {str(key): str(value) for key, value in rows}
    missing = sorted(_META_KEYS - meta.keys())
    if missing:
        raise _corrupt(path, f"the meta table lacks {missing}")
    return meta


def _check_snapshots(path: Path, conn: sqlite3.Connection) -> None:
    for upto_seq, blob, digest, raw_bytes in conn.execute(
        "SELECT upto_seq, blob, sha256, raw_bytes FROM snapshots"
    ):
        _snapshot_bytes(path, upto_seq, blob, digest, raw_bytes)


def _snapshot_bytes(path: Path, upto_seq: int, blob: bytes, digest: bytes, raw_bytes: int) -> bytes:
    what = f"snapshot up to seq {upto_seq}"
    raw = _inflate(path, what, blob, raw_bytes)
    if len(raw) != raw_bytes or hashlib.sha256(raw).digest() != digest:
        raise _corrupt(path, f"{what} does not match its sha256")
    return raw


def _check_op_rows(path: Path, conn: sqlite3.Connection) -> None:
    dctx = zstandard.ZstdDecompressor()
    for seq, op_id, codec, body in conn.execute("SELECT seq, id, codec, body FROM ops"):
        raw = _op_body(path, seq, codec, body, dctx)
        if eip191_hash(raw) != op_id:
            raise _corrupt(path, f"op row seq {seq}: its id is not the hash of its body")


def _op_body(
    path: Path, seq: int, codec: int, body: bytes, dctx: zstandard.ZstdDecompressor
) -> bytes:
    if codec == _CODEC_RAW:
        return body
    if codec == _CODEC_ZSTD:
        return _inflate(path, f"op row seq {seq}", body, OP_BODY_BYTES_MAX, dctx)
    raise _corrupt(path, f"op row seq {seq} has unknown codec {codec}")


def _validate(path: Path, network: str, verify_ops: bool) -> bool:
    """Check an existing file read-only. True if it is blank; raises if it must be refused."""
    wal_present = Path(f"{path}-wal").exists()
    # With no WAL the main file is the whole truth, and `immutable` opens it without locks or
    # side files. With a WAL (a crash, or a live node) we must read through it.
    uri = path.resolve().as_uri() + ("?mode=ro" if wal_present else "?mode=ro&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(
            path, f"cannot open the store ({exc}); check the file's permissions"
        ) from None
    try:
        try:
            if _is_blank(conn):
                return True
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            user_version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != _SQLITE_NOTADB:
                raise _sqlite_failure(path, exc) from None
            raise ForeignStore(
                path,
                f"not a formation-node store: SQLite says {exc!s:.80}; move it aside or choose"
                " another data directory",
            ) from None
        if app_id != APPLICATION_ID:
            raise ForeignStore(
                path,
                f"not a formation-node store (SQLite application_id {app_id:#010x}, ours is"
                f" {APPLICATION_ID:#010x}); move it aside or choose another data directory",
            )
        if user_version > SCHEMA_VERSION:
            raise NewerFormat(
                path,
                f"store format {user_version} is newer than this software reads"
                f" ({SCHEMA_VERSION}, {CREATED_BY}); upgrade formation-node, or move the file"
                " aside and resync from peers",
            )
        if user_version < 1:
            raise _corrupt(path, f"user_version is {user_version} but the file is ours")
        meta = _read_meta(path, conn)
        if meta["format_version"] != str(user_version):
            raise _corrupt(
                path,
                f"meta says format {meta['format_version']} but user_version is {user_version}",
            )
        if meta["network"] != network:
            raise WrongNetwork(
                path,
                f"the store holds ops of network {meta['network']!r}, this node runs"
                f" {network!r}; use one data directory per network",
            )
        problems = [
            str(row[0]).replace("\n", "; ") for row in conn.execute("PRAGMA quick_check(5)")
        ]
        if problems != ["ok"]:
            raise _corrupt(path, "quick_check: " + "; ".join(problems))
        _check_snapshots(path, conn)
        if verify_ops:
            _check_op_rows(path, conn)
    except sqlite3.DatabaseError as exc:
        # Past the header the file is ours: "not a database" now means damage, not a stranger.
        raise _sqlite_failure(path, exc) from None
    finally:
        conn.close()
    return False


def _connect_rw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # our lock serializes; worker threads vary
        timeout=BUSY_TIMEOUT_MS / 1000,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(
                path,
                f"SQLite refused WAL mode (got {mode!r}); put the data directory on a local"
                " file system",
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA fullfsync = ON")  # macOS: fsync alone does not flush the disk
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
    except BaseException:
        conn.close()
        raise
    return conn


def _initialize(path: Path, conn: sqlite3.Connection, network: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-checked under the write lock: another process may have initialized it meanwhile.
        if not _is_blank(conn):
            raise StoreError(path, "the store was created concurrently; open it again")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("format_version", str(SCHEMA_VERSION)),
                ("network", network),
                ("created_by", CREATED_BY),
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _fsync_dir(path.parent)


class Store:
    """The durable op log of one node (see the module docstring). Open with ``Store.open``."""

    def __init__(self, path: Path, network: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self.network = network
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()
        # zstd contexts are not thread-safe: these two are only used under the lock.
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._decompressor = zstandard.ZstdDecompressor()

    @classmethod
    def open(
        cls, data_dir: Path, *, network: str, create: bool = True, verify_ops: bool = True
    ) -> Store:
        """Open (or create) the store in ``data_dir``, refusing anything that is not sound.

        Raises ``ForeignStore``, ``NewerFormat``, ``CorruptStore``, ``WrongNetwork`` or
        ``StoreMissing`` (all ``StoreError``) and then leaves the file untouched.
        ``verify_ops=False`` skips hashing every op row at open (≈ the cost of one replay);
        rows are still verified as they are read.
        """
        if not isinstance(network, str) or not network:
            raise ValueError(f"network must be a non-empty network id string, got {network!r}")
        data_dir = Path(data_dir)
        path = data_dir / DB_FILENAME
        if data_dir.exists() and not data_dir.is_dir():
            raise StoreError(data_dir, "the data directory is not a directory; choose another path")
        exists = path.exists()
        blank = _validate(path, network, verify_ops) if exists else True
        if blank and not create:
            state = "is empty" if exists else "does not exist"
            raise StoreMissing(
                path, f"the store {state}; open it with create=True or check the data directory"
            )
        if not exists:
            made = not data_dir.exists()
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if made:
                _fsync_dir(data_dir.resolve().parent)
        try:
            conn = _connect_rw(path)
        except sqlite3.Error as exc:
            raise StoreError(path, f"cannot open the store ({exc}); check permissions") from None
        try:
            if blank:
                _initialize(path, conn, network)
        except BaseException:
            conn.close()
            raise
        return cls(path, network, conn)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (SQLite checkpoints the WAL into it). Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"Store({str(self.path)!r}, network={self.network!r}, {state})"

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(self.path, "the store is closed; open it again with Store.open")
        return self._conn

    # -- ops -------------------------------------------------------------------------------

    def _check(self, op: Op) -> None:
        if not isinstance(op, Op):
            raise TypeError(f"append takes Op objects, got {type(op).__name__}")
        if op.net != self.network:
            raise ValueError(
                f"op {op.id.hex()[:12]}… is for network {op.net!r}; this store holds"
                f" {self.network!r}"
            )
        if len(op.sig) != 65 or eip191_hash(op.body) != op.id:
            raise ValueError(
                f"op {op.id.hex()[:12]}… is inconsistent (id is not the hash of its body or the"
                " signature is not 65 bytes); build ops with sign_op, decode_op or Op.trusted"
            )

    def _row(self, op: Op) -> tuple[bytes, int, bytes, bytes, int, str, str]:
        codec, body = _CODEC_RAW, op.body
        if len(body) > COMPRESS_BODY_BYTES_MIN:
            packed = self._compressor.compress(body)
            if len(packed) < len(body):  # incompressible bodies stay raw
                codec, body = _CODEC_ZSTD, packed
        return (op.id, codec, body, op.sig, op.wall_ms, op.kind, op.author)

    def append(self, ops: Sequence[Op]) -> list[int]:
        """Store ``ops`` in one transaction; return the seqs of those not already stored.

        Ops whose id is already stored (or repeated in ``ops``) are skipped. When this returns,
        the new ops are fsync'd. A bad op raises ``TypeError``/``ValueError`` and nothing is
        written.
        """
        if isinstance(ops, Op):
            raise TypeError("append takes a sequence of ops; wrap a single op in a list")
        with self._lock:
            conn = self._db()
            for op in ops:
                self._check(op)
            fresh = list({op.id: op for op in ops}.values())
            if not fresh:
                return []
            seqs: list[int] = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Known ids are filtered out up front rather than by ON CONFLICT, which would
                # still burn an AUTOINCREMENT seq for every duplicate gossip delivers.
                known: set[bytes] = set()
                for start in range(0, len(fresh), _IN_CHUNK):
                    chunk = [op.id for op in fresh[start : start + _IN_CHUNK]]
                    marks = ",".join("?" * len(chunk))
                    known.update(
                        row[0]
                        for row in conn.execute(f"SELECT id FROM ops WHERE id IN ({marks})", chunk)
                    )
                for op in fresh:
                    if op.id in known:
                        continue
                    cursor = conn.execute(
                        "INSERT INTO ops (id, codec, body, sig, wall_ms, kind, author)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        self._row(op),
                    )
                    assert cursor.lastrowid is not None
                    seqs.append(cursor.lastrowid)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return seqs

    def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[int, bytes, bytes, bytes]]:
        """``(seq, id, body, sig)`` rows, bodies inflated. Call under the lock."""
        return [
            (seq, op_id, _op_body(self.path, seq, codec, body, self._decompressor), sig)
            for seq, op_id, codec, body, sig in self._db().execute(sql, params)
        ]

    def _rebuild(self, seq: int, op_id: bytes, body: bytes, sig: bytes) -> Op:
        # Outside the lock: parsing and hashing a page of bodies need not stall appends.
        try:
            op = Op.trusted(body, sig)
        except (ValueError, KeyError, TypeError) as exc:
            raise _corrupt(self.path, f"op row seq {seq} has an unreadable body: {exc}") from None
        if op.id != op_id:
            raise _corrupt(self.path, f"op row seq {seq}: its id is not the hash of its body")
        return op

    def iter_ops(self, after_seq: int = 0) -> Iterator[tuple[int, Op]]:
        """Yield ``(seq, op)`` for every op with ``seq > after_seq``, in seq order.

        Reads pages of rows; ops appended while iterating are yielded too.
        """
        cursor_seq = after_seq
        while True:
            with self._lock:
                rows = self._fetch(
                    "SELECT seq, id, codec, body, sig FROM ops WHERE seq > ? ORDER BY seq LIMIT ?",
                    (cursor_seq, _PAGE_ROWS),
                )
            for row in rows:
                yield row[0], self._rebuild(*row)
            if len(rows) < _PAGE_ROWS:
                return
            cursor_seq = rows[-1][0]

    def get(self, ids: Iterable[bytes]) -> list[Op]:
        """The stored ops among ``ids``, in the order asked; unknown ids are left out."""
        wanted = list(dict.fromkeys(ids))
        rows: list[tuple[int, bytes, bytes, bytes]] = []
        with self._lock:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += self._fetch(
                    f"SELECT seq, id, codec, body, sig FROM ops WHERE id IN ({marks})", chunk
                )
        found = {row[1]: self._rebuild(*row) for row in rows}
        return [found[op_id] for op_id in wanted if op_id in found]

    def has(self, op_id: bytes) -> bool:
        with self._lock:
            row = self._db().execute("SELECT 1 FROM ops WHERE id = ?", (op_id,)).fetchone()
        return row is not None

    def op_count(self) -> int:
        """Number of stored ops (scans the id index: O(n), for metrics, not hot paths)."""
        with self._lock:
            return int(self._db().execute("SELECT count(*) FROM ops").fetchone()[0])

    def last_seq(self) -> int:
        """The seq of the newest op, 0 if there is none."""
        with self._lock:
            return int(self._db().execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0])

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        total = 0
        for name in (self.path, Path(f"{self.path}-wal")):
            with contextlib.suppress(FileNotFoundError):
                total += name.stat().st_size
        return total

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it (also done automatically)."""
        with self._lock:
            self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def verify(self) -> None:
        """Full integrity check (the same as ``open`` does); raises ``CorruptStore``."""
        with self._lock:
            conn = self._db()
            try:
                problems = [
                    str(row[0]).replace("\n", "; ") for row in conn.execute("PRAGMA quick_check(5)")
                ]
                if problems != ["ok"]:
                    raise _corrupt(self.path, "quick_check: " + "; ".join(problems))
                _check_snapshots(self.path, conn)
                _check_op_rows(self.path, conn)
            except sqlite3.DatabaseError as exc:
                raise _sqlite_failure(self.path, exc) from None

    # -- snapshots -------------------------------------------------------------------------

    def put_snapshot(self, upto_seq: int, blob: bytes) -> None:
        """Store a serialized state covering ops ``1..upto_seq``; keep only the newest two.

        Durable when it returns. ``upto_seq`` must not exceed ``last_seq()`` nor be older than
        the newest stored snapshot (an equal one replaces it).
        """
        if type(upto_seq) is not int or upto_seq < 0:
            raise ValueError(f"upto_seq must be a non-negative int, got {upto_seq!r}")
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise TypeError(f"a snapshot is bytes, got {type(blob).__name__}")
        raw = bytes(blob)
        # Compressed outside the lock (snapshots can be large) with a compressor of our own,
        # since a zstd context must not be shared between threads.
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(raw)
        digest = hashlib.sha256(raw).digest()
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0]
                newest = conn.execute("SELECT max(upto_seq) FROM snapshots").fetchone()[0]
                if upto_seq > last:
                    raise ValueError(
                        f"snapshot covers seq {upto_seq} but the log ends at seq {last};"
                        " snapshot only what has been appended"
                    )
                if newest is not None and upto_seq < newest:
                    raise ValueError(
                        f"snapshot up to seq {upto_seq} is older than the stored one up to"
                        f" seq {newest}; snapshots must move forward"
                    )
                conn.execute(
                    "INSERT OR REPLACE INTO snapshots (upto_seq, blob, sha256, raw_bytes)"
                    " VALUES (?, ?, ?, ?)",
                    (upto_seq, packed, digest, len(raw)),
                )
                conn.execute(
                    "DELETE FROM snapshots WHERE upto_seq NOT IN"
                    " (SELECT upto_seq FROM snapshots ORDER BY upto_seq DESC LIMIT ?)",
                    (SNAPSHOTS_KEPT,),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        """``(upto_seq, blob)`` of the newest snapshot, checksum verified; None if none."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT upto_seq, blob, sha256, raw_bytes FROM snapshots"
                    " ORDER BY upto_seq DESC LIMIT 1"
                )
                .fetchone()
            )
        if row is None:
            return None
        upto_seq, blob, digest, raw_bytes = row
        return upto_seq, _snapshot_bytes(self.path, upto_seq, blob, digest, raw_bytes)
