"""SIGKILL a process that is appending to the store: every acknowledged op must survive.

A SIGKILL drops nothing the kernel already has, so this checks the store's own protocol
(commit before acknowledging, a WAL that recovers cleanly, no half-written row or snapshot
visible after a crash), not the disk's fsync; power-cut durability rests on
``synchronous=FULL`` and is argued in node/store/sqlite.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from node.store import Store
from tests.real.crash_run import run_then_sigkill

pytestmark = pytest.mark.real

WRITER = Path(__file__).with_name("store_crash_writer.py")
DEADLINE_S = 15.0  # a guard against a hung child, not a speed assertion


def read_acks_then_kill(
    data_dir: Path, seed: int, acks_wanted: int, linger_s: float
) -> list[bytes]:
    out = run_then_sigkill(
        WRITER, [str(data_dir), str(seed)], b"\n", acks_wanted, linger_s, DEADLINE_S
    )
    lines = out.split(b"\n")[:-1]  # a torn last line does not count
    return [bytes.fromhex(line.decode()) for line in lines]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_acknowledged_op_survives_sigkill(tmp_path: Path, seed: int) -> None:
    data_dir = tmp_path / "node"
    rng = random.Random(seed)
    acks_wanted = rng.randrange(200, 500)
    acked = read_acks_then_kill(data_dir, seed, acks_wanted, linger_s=rng.uniform(0, 0.01))
    assert len(acked) >= acks_wanted

    with Store.open(data_dir, network="local", create=False) as store:  # verifies every row
        unique = list(dict.fromkeys(acked))
        found = {op.id for op in store.get(unique)}
        missing = [op_id.hex() for op_id in unique if op_id not in found]
        assert missing == [], f"{len(missing)} acknowledged ops lost, e.g. {missing[:3]}"
        assert store.op_count() >= len(unique)
        seqs = [seq for seq, _ in store.iter_ops()]
        assert seqs == sorted(set(seqs))
        snapshot = store.latest_snapshot()  # checksum verified
        assert snapshot is None or snapshot[0] <= store.last_seq()
        # The store stays writable after recovery.
        assert store.append([]) == []
