"""SIGKILL a node process while concurrent writes are being group-committed: every answered
write must be there after a restart, and no write may be there in part.

The writer (``group_commit_crash_writer.py``) runs 32 concurrent writers through the gossip
driver's group commit, the gateway's write path, each write 1-3 ops. It prints a write's op
ids before submitting it and again once it is answered. After the kill the replica is opened
as a restarted node would be (snapshot + replay) and checked: each answered write whole in the
store and the state; each write, answered or not, all or nothing (a batch is one transaction);
and the writes did share commits. Runtime: ~1.3 s per seed here.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from node.replica import Replica
from tests.real.crash_run import run_then_sigkill

pytestmark = pytest.mark.real

WRITER = Path(__file__).with_name("group_commit_crash_writer.py")
DEADLINE_S = 30.0  # a guard against a hung child, not a speed assertion


def _run_then_kill(data_dir: Path, seed: int, acks_wanted: int, linger_s: float) -> list[str]:
    out = run_then_sigkill(
        WRITER, [str(data_dir), str(seed)], b"\nA ", acks_wanted, linger_s, DEADLINE_S
    )
    return out.decode().split("\n")[:-1]  # a torn last line does not count


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_answered_group_committed_write_survives_sigkill_whole(
    tmp_path: Path, seed: int
) -> None:
    data_dir = tmp_path / "node"
    rng = random.Random(seed)
    lines = _run_then_kill(data_dir, seed, rng.randrange(300, 800), rng.uniform(0, 0.02))
    intended = [line[2:].split(",") for line in lines if line.startswith("W ")]
    answered = [line[2:].split(" ") for line in lines if line.startswith("A ")]
    assert len(answered) >= 300
    commits, writes = (int(x) for x in answered[-1][1:])
    assert writes > commits  # writes shared commits: this exercised group commit

    replica = Replica.open(data_dir, "local")  # as a restarted node: snapshot + replay
    try:
        for fields in answered:
            ids = [bytes.fromhex(x) for x in fields[0].split(",")]
            assert all(replica.has(op_id) for op_id in ids), f"answered write lost: {fields[0]}"
        partial = []
        in_state = 0
        for ids_hex in intended:
            held = [replica.has(bytes.fromhex(x)) for x in ids_hex]
            in_state += all(held)
            if any(held) and not all(held):
                partial.append(ids_hex)
        assert partial == [], f"{len(partial)} writes stored in part, e.g. {partial[:2]}"
        assert in_state >= len(answered)
        stored = replica.store.op_count()
        assert stored == replica.state.op_count  # the store and the rebuilt state agree
        # The restarted replica still takes writes.
        assert replica.store.append([]) == []
    finally:
        replica.close()
