"""Several nodes in one process over real libp2p on loopback: they form a fog and share ops.

Each node is the real stack minus the process: Replica (SQLite in a tmp dir), GossipCore,
GossipService and a libp2p Transport. Joining goes through bootstrap multiaddrs without
``/p2p/``, as operators write them.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from node.gossip.config import GossipConfig
from node.gossip.core import GossipCore
from node.mesh.gossip_driver import GossipService, join_through
from node.mesh.transport import open_transport
from node.replica import Replica
from tests.helpers import NET, seeded_keys

pytestmark = [
    pytest.mark.real,
    # py-libp2p 0.8.1 can open a second connection when two nodes dial each other at once and
    # does not close it when the host stops; the socket is only reclaimed by the garbage
    # collector. Harmless in a node process (it is exiting), noisy here. Not our sockets: the
    # transport test (tests/real/test_transport.py) checks ours are closed.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

KEYS = seeded_keys(5, seed=41)


async def wait_until(predicate: Callable[[], bool]) -> None:
    # Polls replicas and membership owned by other tasks; there is no event to await.
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.05)


async def test_five_nodes_form_a_fog_from_one_bootstrap_peer_and_share_ops(tmp_path: Path) -> None:
    await _five_node_fog(tmp_path)
    # Everything of the fog is unreachable now: reclaim py-libp2p's stray sockets here, under
    # this test's warning filters, rather than at the end of the session.
    gc.collect()


async def _five_node_fog(tmp_path: Path) -> None:
    services: list[GossipService] = []
    replicas: list[Replica] = []
    try:
        async with trio.open_nursery() as nursery:
            first_addr = ""
            for i, key in enumerate(KEYS):
                replica = Replica.open(tmp_path / f"n{i}", NET)
                replicas.append(replica)
                transport = await nursery.start(_run_transport, key)
                core = GossipCore(
                    key.address,
                    transport.listen_addrs[0],
                    GossipConfig.local(),
                    random.Random(i),
                    replica,
                )
                service = GossipService(core, replica, transport)
                services.append(await nursery.start(service.run))
                if i == 0:
                    # A bootstrap entry as operators write it: no /p2p/<peer id>.
                    first_addr = transport.listen_addrs[0].split("/p2p/")[0]
                else:
                    nursery.start_soon(
                        join_through, service, transport, first_addr, random.Random(i)
                    )
            with trio.fail_after(30):
                await wait_until(lambda: all(len(s.core.membership.alive()) == 4 for s in services))
                made = await services[3].write(KEYS[3], "account.create", {"name": "dave"})
                await wait_until(lambda: all(r.has(made.id) for r in replicas))
            for replica in replicas:
                account = replica.state.account(KEYS[3].address)
                assert account is not None
                assert account["name"] == "dave"
                assert replica.store.has(made.id)
            assert len({r.state.state_hash() for r in replicas}) == 1
            nursery.cancel_scope.cancel()
    finally:
        for replica in replicas:
            replica.close()


async def _run_transport(
    key: object, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
) -> None:
    async with open_transport(key, ["/ip4/127.0.0.1/tcp/0"]) as transport:  # type: ignore[arg-type]
        task_status.started(transport)
        await trio.sleep_forever()
