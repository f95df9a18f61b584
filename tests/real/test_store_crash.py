"""SIGKILL a process that is appending to the store: every acknowledged op must survive.

A SIGKILL drops nothing the kernel already has, so this checks the store's own protocol
(commit before acknowledging, a WAL that recovers cleanly, no half-written row or snapshot
visible after a crash), not the disk's fsync; power-cut durability rests on
``synchronous=FULL`` and is argued in node/store/sqlite.py.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.store import Store

pytestmark = pytest.mark.real

WRITER = Path(__file__).with_name("store_crash_writer.py")
DEADLINE_S = 15.0  # a guard against a hung child, not a speed assertion


def read_acks_then_kill(
    data_dir: Path, seed: int, acks_wanted: int, linger_s: float
) -> list[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    give_up = time.monotonic() + DEADLINE_S
    try:
        while buffer.count(b"\n") < acks_wanted:
            ready, _, _ = select.select([fd], [], [], max(0.0, give_up - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                proc.kill()
                _, err = proc.communicate()
                acks = buffer.count(b"\n")
                pytest.fail(
                    f"writer stopped after {acks} acks"
                    f" (exit {proc.returncode}): {err.decode(errors='replace')}"
                )
            buffer += chunk
        time.sleep(linger_s)  # let the kill land at a seed-dependent point of the loop
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # Acks written before the kill but not yet read count too; a torn last line does not.
    lines = (buffer + rest).split(b"\n")[:-1]
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
