"""Child process for test_group_commit_crash.py: many concurrent writers group-committing
through the gossip driver (``GossipService.submit_checked``, the gateway's path), forever.

Usage: python group_commit_crash_writer.py DATA_DIR SEED. Each write is 1-3 ops of one new
account (create, then updates). Before a write is submitted its op ids are printed as
``W id,id,...``; once ``submit_checked`` has answered (the batch is durable) they are printed
again as ``A id,id,... COMMITS WRITES`` (the driver's counters, to show that writes shared
commits). The parent SIGKILLs this process at an arbitrary point and checks the store.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import trio

from node.gossip.config import GossipConfig
from node.gossip.core import GossipCore
from node.identity.keys import NodeKey
from node.ledger.admission import own
from node.ledger.op import Op, sign_op
from node.p2p.gossip_driver import GossipService
from node.replica import Replica

NET = "local"
WRITERS = 32


class _Alone:
    """A transport with no peers: the node gossips to nobody."""

    def __init__(self) -> None:
        self.inbox_send, self.inbox = trio.open_memory_channel[tuple[str, bytes]](1)

    async def send(self, to: str, data: bytes) -> None:
        raise ConnectionError(f"{to} unreachable")

    async def connect(self, multiaddr: str) -> str:
        raise ConnectionError(f"{multiaddr} unreachable")

    async def forget(self, address: str) -> bool:
        return True


def _write(rng: random.Random, n: int) -> list[Op]:
    user = NodeKey(rng.randbytes(32))
    wall_ms = 1_700_000_000_000 + n
    ops = [sign_op(user, NET, (wall_ms, 0), "account.create", {"name": f"u{n}"})]
    for i in range(rng.choice((0, 0, 1, 2))):
        ops.append(
            sign_op(user, NET, (wall_ms, i + 1), "account.update", {"description": f"d{n}.{i}"})
        )
    return ops


async def main() -> None:
    data_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    replica = Replica.open(data_dir, NET)
    node = NodeKey(random.Random(seed).randbytes(32))
    core = GossipCore(
        node.address, node.address, GossipConfig.local(), random.Random(seed), replica
    )
    service = GossipService(core, replica, _Alone())  # type: ignore[arg-type]
    out = sys.stdout
    counter = iter(range(10**9))

    async def writer(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        while True:
            ops = _write(rng, next(counter))
            ids = ",".join(op.id.hex() for op in ops)
            out.write(f"W {ids}\n")
            out.flush()
            await service.submit_checked([own(op) for op in ops])
            out.write(f"A {ids} {service.commits} {service.writes_committed}\n")
            out.flush()

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for index in range(WRITERS):
            nursery.start_soon(writer, index)


if __name__ == "__main__":
    trio.run(main)
