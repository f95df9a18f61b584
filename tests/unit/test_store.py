"""The durable op log: round trips, dedup, compression, snapshots and every refusal."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from node.identity.keys import NodeKey
from node.ledger.op import Op, sign_op
from node.store import (
    APPLICATION_ID,
    DB_FILENAME,
    SCHEMA_VERSION,
    CorruptStore,
    ForeignStore,
    NewerFormat,
    Store,
    StoreError,
    StoreMissing,
    WrongNetwork,
)

NET = "local"


@pytest.fixture
def key() -> NodeKey:
    return NodeKey(random.Random(7).randbytes(32))


def make_ops(key: NodeKey, count: int, *, start: int = 0, pad_bytes: int = 40) -> list[Op]:
    return [
        sign_op(key, NET, (1_700_000_000_000 + i, 0), "test.op", {"i": i, "pad": "x" * pad_bytes})
        for i in range(start, start + count)
    ]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    with Store.open(data_dir, network=NET) as opened:
        yield opened


def raw(data_dir: Path) -> sqlite3.Connection:
    """A plain SQLite connection, to inspect or tamper with a closed store."""
    return sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)


def tamper(data_dir: Path, *statements: str) -> None:
    conn = raw(data_dir)
    for statement in statements:
        conn.execute(statement)
    conn.close()  # last connection: SQLite checkpoints and removes the WAL


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_refused(
    data_dir: Path, error: type[StoreError], *fragments: str, network: str = NET
) -> StoreError:
    before = files_of(data_dir)
    with pytest.raises(error) as info:
        Store.open(data_dir, network=network)
    message = str(info.value)
    assert str(data_dir / DB_FILENAME) in message
    for fragment in fragments:
        assert fragment in message
    assert files_of(data_dir) == before, "a refused open changed the data directory"
    return info.value


# -- round trip ------------------------------------------------------------------------------


def test_round_trip_and_reopen(data_dir: Path, key: NodeKey) -> None:
    ops = make_ops(key, 5)
    with Store.open(data_dir, network=NET) as store:
        assert store.last_seq() == 0
        assert store.op_count() == 0
        assert list(store.iter_ops()) == []
        seqs = store.append(ops)
        assert seqs == [1, 2, 3, 4, 5]
        assert store.last_seq() == 5
        assert store.op_count() == 5
        assert [(s, op.id, op.body, op.sig) for s, op in store.iter_ops()] == [
            (s, op.id, op.body, op.sig) for s, op in zip(seqs, ops, strict=True)
        ]
    with Store.open(data_dir, network=NET, create=False) as store:
        assert [op for _, op in store.iter_ops()] == ops
        assert [s for s, _ in store.iter_ops(after_seq=3)] == [4, 5]
        assert store.get([ops[3].id, b"\x00" * 32, ops[1].id]) == [ops[3], ops[1]]
        assert store.has(ops[0].id)
        assert not store.has(b"\x01" * 32)
        assert store.size_bytes() > 0


def test_iter_ops_pages_through_many_rows(store: Store, key: NodeKey) -> None:
    ops = make_ops(key, 600, pad_bytes=0)
    store.append(ops[:300])
    store.append(ops[300:])
    seen = list(store.iter_ops())
    assert [s for s, _ in seen] == list(range(1, 601))
    assert [op.id for _, op in seen] == [op.id for op in ops]
    assert [s for s, _ in store.iter_ops(after_seq=599)] == [600]
    assert len(store.get(op.id for op in ops)) == 600


def test_appending_while_iterating_neither_deadlocks_nor_misses(store: Store, key: NodeKey) -> None:
    ops = make_ops(key, 600, pad_bytes=0)
    store.append(ops[:300])
    seen = []
    for seq, op in store.iter_ops():
        seen.append(op.id)
        if seq == 10:
            store.append(ops[300:])  # the iterator holds no lock between pages
    assert seen == [op.id for op in ops]


def test_appends_from_many_threads(store: Store, key: NodeKey) -> None:
    ops = make_ops(key, 400, pad_bytes=0)
    results: list[list[int]] = [[] for _ in range(4)]

    def worker(n: int) -> None:
        for start in range(n * 100, n * 100 + 100, 10):
            # Every thread also re-sends a neighbour's ops: each op is stored exactly once.
            results[n] += store.append(ops[start : start + 10] + ops[(start + 100) % 400 :][:5])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = sorted(seq for result in results for seq in result)
    assert seqs == list(range(1, 401))
    assert {op.id for _, op in store.iter_ops()} == {op.id for op in ops}


def test_file_layout_and_pragmas(data_dir: Path, store: Store) -> None:
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    conn = raw(data_dir)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    assert meta["network"] == NET
    assert meta["format_version"] == str(SCHEMA_VERSION)
    assert meta["created_by"].startswith("formation-node ")
    assert store._db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_an_empty_file_is_initialized(data_dir: Path, key: NodeKey) -> None:
    # What a crash between creating the file and the first commit leaves behind.
    data_dir.mkdir()
    (data_dir / DB_FILENAME).write_bytes(b"")
    with Store.open(data_dir, network=NET) as store:
        assert store.append(make_ops(key, 1)) == [1]


# -- duplicates and bad input -----------------------------------------------------------------


def test_duplicates_are_ignored(store: Store, key: NodeKey) -> None:
    a, b, c = make_ops(key, 3)
    assert store.append([a, b]) == [1, 2]
    assert store.append([b, c, c, a]) == [3]
    assert store.append([a]) == []
    assert store.append([]) == []
    assert store.op_count() == 3
    assert [op for _, op in store.iter_ops()] == [a, b, c]


def test_bad_ops_are_refused_and_nothing_is_written(store: Store, key: NodeKey) -> None:
    good = make_ops(key, 1)[0]
    other_net = sign_op(key, "devnet", (1, 0), "test.op", {})
    with pytest.raises(ValueError, match="network 'devnet'"):
        store.append([good, other_net])
    forged = dataclasses.replace(good, id=b"\x00" * 32)
    with pytest.raises(ValueError, match="inconsistent"):
        store.append([forged])
    with pytest.raises(TypeError, match="sequence of ops"):
        store.append(good)  # type: ignore[arg-type]
    assert store.op_count() == 0


def test_a_closed_store_says_so(data_dir: Path) -> None:
    store = Store.open(data_dir, network=NET)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.op_count()


# -- compression -------------------------------------------------------------------------------


def test_large_bodies_are_compressed_small_ones_are_not(
    store: Store, data_dir: Path, key: NodeKey
) -> None:
    small = make_ops(key, 1, pad_bytes=100)[0]
    large = sign_op(key, NET, (5, 0), "test.big", {"text": "formfile line\n" * 400})
    assert len(small.body) <= 1024 < len(large.body)
    store.append([small, large])
    conn = raw(data_dir)
    rows = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, codec, length(body) FROM ops")}
    conn.close()
    assert rows[small.id] == (0, len(small.body))
    codec, stored_bytes = rows[large.id]
    assert codec == 1
    assert stored_bytes < len(large.body) // 10
    assert store.get([large.id]) == [large]
    assert [op for _, op in store.iter_ops()] == [small, large]


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshots_keep_the_newest_two(store: Store, data_dir: Path, key: NodeKey) -> None:
    assert store.latest_snapshot() is None
    store.append(make_ops(key, 10))
    blobs = {seq: f"state at {seq} ".encode() * 1000 for seq in (2, 5, 9)}
    for seq, blob in blobs.items():
        store.put_snapshot(seq, blob)
        assert store.latest_snapshot() == (seq, blob)
    conn = raw(data_dir)
    kept = [row[0] for row in conn.execute("SELECT upto_seq FROM snapshots ORDER BY upto_seq")]
    stored_bytes = conn.execute("SELECT length(blob) FROM snapshots WHERE upto_seq = 9").fetchone()
    conn.close()
    assert kept == [5, 9]
    assert stored_bytes[0] < len(blobs[9]) // 10
    store.put_snapshot(9, b"replaced")
    assert store.latest_snapshot() == (9, b"replaced")


def test_snapshot_bounds_are_checked(store: Store, key: NodeKey) -> None:
    store.append(make_ops(key, 3))
    with pytest.raises(ValueError, match="log ends at seq 3"):
        store.put_snapshot(4, b"x")
    store.put_snapshot(3, b"x")
    with pytest.raises(ValueError, match="older than the stored one"):
        store.put_snapshot(2, b"y")
    assert store.latest_snapshot() == (3, b"x")


def test_snapshot_survives_reopen(data_dir: Path, key: NodeKey) -> None:
    with Store.open(data_dir, network=NET) as store:
        store.append(make_ops(key, 2))
        store.put_snapshot(2, b"\x00\x01" * 5000)
    with Store.open(data_dir, network=NET) as store:
        assert store.latest_snapshot() == (2, b"\x00\x01" * 5000)


# -- refusals ----------------------------------------------------------------------------------


def test_missing_store_with_create_false(data_dir: Path) -> None:
    with pytest.raises(StoreMissing, match="does not exist"):
        Store.open(data_dir, network=NET, create=False)
    assert not data_dir.exists()


def test_garbage_file_is_foreign(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / DB_FILENAME).write_bytes(random.Random(1).randbytes(8192))
    assert_refused(data_dir, ForeignStore, "not a database", "not a formation-node store")


def test_other_sqlite_application_is_foreign(data_dir: Path) -> None:
    data_dir.mkdir()
    conn = raw(data_dir)
    conn.execute("PRAGMA application_id = 0x0f0f0f0f")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert_refused(data_dir, ForeignStore, "0x0f0f0f0f", "application_id")


def test_our_store_with_another_application_id_is_foreign(data_dir: Path) -> None:
    Store.open(data_dir, network=NET).close()
    tamper(data_dir, "PRAGMA application_id = 1234")
    assert_refused(data_dir, ForeignStore, "application_id")


def test_a_newer_format_is_refused(data_dir: Path, key: NodeKey) -> None:
    with Store.open(data_dir, network=NET) as store:
        store.append(make_ops(key, 3))
    tamper(data_dir, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert_refused(data_dir, NewerFormat, f"format {SCHEMA_VERSION + 1}", "upgrade")


def test_wrong_network_is_refused(data_dir: Path, key: NodeKey) -> None:
    with Store.open(data_dir, network=NET) as store:
        store.append(make_ops(key, 3))
    assert_refused(data_dir, WrongNetwork, "'local'", "'devnet'", network="devnet")


def test_a_corrupt_snapshot_is_refused(data_dir: Path, key: NodeKey) -> None:
    with Store.open(data_dir, network=NET) as store:
        store.append(make_ops(key, 3))
        store.put_snapshot(3, b"the real state" * 100)
    wrong = zstandard.ZstdCompressor().compress(b"the fake state" * 100).hex()
    tamper(data_dir, f"UPDATE snapshots SET blob = x'{wrong}'")
    assert_refused(data_dir, CorruptStore, "snapshot up to seq 3", "sha256")


def test_a_snapshot_corrupted_while_open_is_caught_on_read(store: Store, data_dir: Path) -> None:
    blob = b"state" * 1000
    store.put_snapshot(0, blob)
    conn = raw(data_dir)
    conn.execute("UPDATE snapshots SET sha256 = ?", (hashlib.sha256(b"other").digest(),))
    conn.close()
    with pytest.raises(CorruptStore, match="does not match its sha256"):
        store.latest_snapshot()


def test_an_op_row_whose_id_is_not_its_hash_is_refused(data_dir: Path, key: NodeKey) -> None:
    ops = make_ops(key, 5)
    with Store.open(data_dir, network=NET) as store:
        store.append(ops)
    tamper(
        data_dir,
        "UPDATE ops SET body = CAST(replace(CAST(body AS TEXT), 'x', 'y') AS BLOB) WHERE seq = 4",
    )
    assert_refused(data_dir, CorruptStore, "op row seq 4", "hash of its body")
    # Skipping the scan at open still never lets the bad row out.
    with Store.open(data_dir, network=NET, verify_ops=False) as store:
        assert store.get([ops[0].id]) == [ops[0]]
        with pytest.raises(CorruptStore, match="op row seq 4"):
            list(store.iter_ops())
        with pytest.raises(CorruptStore, match="op row seq 4"):
            store.get([ops[3].id])
        with pytest.raises(CorruptStore, match="op row seq 4"):
            store.verify()


def test_a_damaged_page_fails_quick_check(data_dir: Path, key: NodeKey) -> None:
    with Store.open(data_dir, network=NET) as store:
        store.append(make_ops(key, 400, pad_bytes=200))
    conn = raw(data_dir)
    page_bytes = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'ops'").fetchone()[0]
    conn.close()
    path = data_dir / DB_FILENAME
    image = bytearray(path.read_bytes())
    start = (root - 1) * page_bytes
    image[start : start + 64] = b"\xff" * 64  # wreck the b-tree page header of the ops table
    path.write_bytes(bytes(image))
    assert_refused(data_dir, CorruptStore, "the store is corrupt")
