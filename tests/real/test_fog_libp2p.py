"""Several nodes in one process over real libp2p on loopback: they form a fog and share ops.

Each node is the real stack minus the process: Replica (SQLite in a tmp dir), GossipCore,
GossipService and a libp2p Transport. Joining goes through bootstrap multiaddrs without
``/p2p/``, as operators write them.
"""

from __future__ import annotations

import contextlib
import gc
import random
from pathlib import Path

import pytest
import trio

from node.gossip import wire
from node.gossip.config import GossipConfig
from node.gossip.core import GossipCore
from node.gossip.messages import Gossip, Packet
from node.identity.keys import NodeKey
from node.p2p.gossip_driver import GossipService, join_through
from node.p2p.transport import TransportLimits, open_transport
from node.replica import Replica
from tests.helpers import NET, op, seeded_keys, wait_until

pytestmark = pytest.mark.real

KEYS = seeded_keys(5, seed=41)


async def test_five_nodes_form_a_fog_from_one_bootstrap_peer_and_share_ops(tmp_path: Path) -> None:
    await _five_node_fog(tmp_path)
    # Every socket was closed when the fog's nursery was cancelled; collecting now would
    # raise ResourceWarning (an error here) for any that was left to the garbage collector.
    gc.collect()


async def _start_fog(
    nursery: trio.Nursery, tmp_path: Path, keys: list[NodeKey], replicas: list[Replica]
) -> tuple[list[GossipService], str]:
    """Start one node per key; all but the first join through the first's bare address
    (no /p2p/<peer id>, as operators write it). Returns the services and that address."""
    services: list[GossipService] = []
    first_addr = ""
    for i, key in enumerate(keys):
        replica = Replica.open(tmp_path / f"n{i}", NET)
        replicas.append(replica)
        transport = await nursery.start(_run_transport, key)
        core = GossipCore(
            key.address, transport.listen_addrs[0], GossipConfig.local(), random.Random(i), replica
        )
        service = GossipService(core, replica, transport)
        services.append(await nursery.start(service.run))
        if i == 0:
            first_addr = transport.listen_addrs[0].split("/p2p/")[0]
        else:
            nursery.start_soon(join_through, service, transport, first_addr, random.Random(i))
    return services, first_addr


async def _five_node_fog(tmp_path: Path) -> None:
    replicas: list[Replica] = []
    try:
        async with trio.open_nursery() as nursery:
            services, _ = await _start_fog(nursery, tmp_path, KEYS, replicas)
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
    key: object,
    limits: TransportLimits | None = None,
    *,
    task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with open_transport(key, ["/ip4/127.0.0.1/tcp/0"], limits=limits) as transport:  # type: ignore[arg-type]
        task_status.started(transport)
        await trio.sleep_forever()


async def test_a_hostile_peer_is_ignored_and_the_others_go_on(tmp_path: Path) -> None:
    await _hostile_peer(tmp_path)
    gc.collect()  # as above: no socket may be left to the garbage collector


async def _hostile_peer(tmp_path: Path) -> None:
    replicas: list[Replica] = []
    try:
        async with trio.open_nursery() as nursery:
            services, first_addr = await _start_fog(nursery, tmp_path, KEYS[:3], replicas)
            with trio.fail_after(30):
                await wait_until(lambda: all(len(s.core.membership.alive()) == 2 for s in services))
            # The attacker: a real libp2p peer that allows itself huge frames.
            hostile = await nursery.start(
                _run_transport, KEYS[4], TransportLimits(frame_bytes_max=64 * 2**20)
            )
            victim = services[0]
            victim_address = KEYS[0].address
            await hostile.connect(first_addr)
            await hostile.send(victim_address, b"\xf1\x00 not a packet")
            good = op(KEYS[4], "account.create", {"name": "mallory"})
            forged_body = good.body.replace(b'"mallory"', b'"alice!!"')
            await hostile.send(
                victim_address,
                wire.encode(Packet(KEYS[4].address, (Gossip(((forged_body, good.sig),)),))),
            )
            with contextlib.suppress(Exception):  # the victim resets the stream mid-frame
                await hostile.send(victim_address, b"\x00" * (5 * 2**20))
            with trio.fail_after(30):
                await wait_until(lambda: victim.bad_packets >= 1)
                # The others go on: an honest op still reaches everyone.
                made = await services[2].write(KEYS[2], "account.create", {"name": "carol"})
                await wait_until(lambda: all(r.has(made.id) for r in replicas))
            assert all(r.state.account(KEYS[4].address) is None for r in replicas)
            assert len({r.state.state_hash() for r in replicas}) == 1
            nursery.cancel_scope.cancel()
    finally:
        for replica in replicas:
            replica.close()
