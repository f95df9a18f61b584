"""Child process for test_store_crash.py: append ops forever, acknowledging each on stdout.

Usage: python store_crash_writer.py DATA_DIR SEED. An op id is printed (and flushed) only after
the ``append`` that stored it has returned, i.e. only once the store says it is durable. The
parent kills this process with SIGKILL at an arbitrary point and checks every printed id.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from node.identity.keys import NodeKey
from node.ledger.op import Op, sign_op
from node.store import Store

NET = "local"
BATCH_SIZES = (1, 1, 1, 2, 5, 10, 30, 100)


def main() -> None:
    data_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    key = NodeKey(rng.randbytes(32))
    out = sys.stdout
    sent: list[Op] = []
    with Store.open(data_dir, network=NET) as store:
        for n in range(10**9):
            batch = [
                sign_op(
                    key,
                    NET,
                    (1_700_000_000_000 + n, i),
                    "crash.test",
                    # Some bodies cross the 1 KiB compression threshold.
                    {"n": n, "i": i, "pad": rng.randbytes(rng.choice((8, 64, 900))).hex()},
                )
                for i in range(rng.choice(BATCH_SIZES))
            ]
            if sent and rng.random() < 0.1:
                batch.append(rng.choice(sent))  # a duplicate, as gossip delivers them
            store.append(batch)
            out.write("".join(f"{op.id.hex()}\n" for op in batch))
            out.flush()
            sent.extend(batch[:3])
            if n % 5 == 4:
                store.put_snapshot(store.last_seq(), rng.randbytes(2000) * 10)


if __name__ == "__main__":
    main()
