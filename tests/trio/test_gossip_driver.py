"""The Trio gossip driver with real replicas (SQLite in tmp dirs) over an in-memory transport."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from node.gossip import wire
from node.gossip.config import GossipConfig
from node.gossip.core import GossipCore
from node.gossip.messages import Packet, Ping
from node.p2p.gossip_driver import GossipService, join_through
from node.replica import Replica
from tests.helpers import NET, T0_MS, seeded_keys, wait_until

KEYS = seeded_keys(4, seed=31)


class MemoryHub:
    def __init__(self) -> None:
        self.inboxes: dict[str, trio.MemorySendChannel[tuple[str, bytes]]] = {}
        self.down: set[str] = set()

    def transport(self, address: str) -> MemoryTransport:
        send, receive = trio.open_memory_channel[tuple[str, bytes]](1024)
        self.inboxes[address] = send
        return MemoryTransport(self, address, receive)


class MemoryTransport:
    def __init__(
        self, hub: MemoryHub, address: str, inbox: trio.MemoryReceiveChannel[tuple[str, bytes]]
    ) -> None:
        self.hub = hub
        self.address = address
        self.inbox = inbox
        self.forgotten: list[str] = []

    async def send(self, to: str, data: bytes) -> None:
        if to in self.hub.down or self.address in self.hub.down:
            raise ConnectionError(f"{to} unreachable")
        await self.hub.inboxes[to].send((self.address, data))

    async def connect(self, multiaddr: str) -> str:
        # Node ids double as addresses in this hub.
        if multiaddr not in self.hub.inboxes:
            raise ConnectionError(f"{multiaddr} unreachable")
        return multiaddr

    async def forget(self, address: str) -> bool:
        self.forgotten.append(address)
        return True


async def start_nodes(
    nursery: trio.Nursery, tmp_path: Path, hub: MemoryHub, count: int
) -> list[GossipService]:
    services = []
    seed_address = KEYS[0].address
    for i in range(count):
        key = KEYS[i]
        replica = Replica.open(tmp_path / f"n{i}", NET)
        core = GossipCore(key.address, key.address, GossipConfig.local(), random.Random(i), replica)
        service = GossipService(
            core, replica, hub.transport(key.address), [] if i == 0 else [seed_address]
        )
        services.append(await nursery.start(service.run))
    return services


async def test_an_op_written_on_one_node_is_durable_on_all(tmp_path: Path) -> None:
    hub = MemoryHub()
    async with trio.open_nursery() as nursery:
        services = await start_nodes(nursery, tmp_path, hub, 4)
        with trio.fail_after(20):
            await wait_until(lambda: all(len(s.core.membership.alive()) == 3 for s in services))
            made = await services[2].write(KEYS[2], "account.create", {"name": "carol"})
            await wait_until(lambda: all(s.replica.has(made.id) for s in services))
        for service in services:
            assert service.replica.store.has(made.id)  # durable, not just applied
            account = service.replica.state.account(KEYS[2].address)
            assert account is not None
            assert account["name"] == "carol"
        nursery.cancel_scope.cancel()
    for service in services:
        service.replica.close()


async def test_garbage_and_spoofed_packets_are_dropped_and_the_node_goes_on(tmp_path: Path) -> None:
    hub = MemoryHub()
    async with trio.open_nursery() as nursery:
        services = await start_nodes(nursery, tmp_path, hub, 2)
        victim = services[1]
        inbox = hub.inboxes[KEYS[1].address]
        await inbox.send((KEYS[0].address, b"\xf1\x00garbage"))
        spoofed = wire.encode(Packet(KEYS[3].address, (Ping(1),)))
        await inbox.send((KEYS[0].address, spoofed))
        with trio.fail_after(20):
            await wait_until(lambda: victim.bad_packets >= 2)
            made = await services[0].write(KEYS[0], "account.create", {"name": "alice"})
            await wait_until(lambda: victim.replica.has(made.id))
        nursery.cancel_scope.cancel()
    for service in services:
        service.replica.close()


class FlakyDialer:
    def __init__(self, failures: int, address: str) -> None:
        self.failures = failures
        self.address = address
        self.attempts: list[float] = []

    async def connect(self, multiaddr: str) -> str:
        self.attempts.append(trio.current_time())
        if len(self.attempts) <= self.failures:
            raise ConnectionRefusedError(f"{multiaddr} refused")
        return self.address


async def test_an_unreachable_bootstrap_peer_is_retried_with_backoff(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    hub = MemoryHub()
    async with trio.open_nursery() as nursery:
        services = await start_nodes(nursery, tmp_path, hub, 2)
        lonely = services[1]
        dialer = FlakyDialer(failures=4, address=KEYS[0].address)
        await join_through(lonely, dialer, "/ip4/127.0.0.1/tcp/1", random.Random(1))
        gaps = [b - a for a, b in zip(dialer.attempts, dialer.attempts[1:], strict=False)]
        # 1 s doubling, each jittered by 0.5x..1.5x
        assert len(gaps) == 4
        for gap, base in zip(gaps, [1, 2, 4, 8], strict=True):
            assert 0.5 * base <= gap <= 1.5 * base
        nursery.cancel_scope.cancel()
    for service in services:
        service.replica.close()


async def test_members_that_leave_or_die_are_forgotten_by_the_transport(tmp_path: Path) -> None:
    hub = MemoryHub()
    async with trio.open_nursery() as nursery:
        services = await start_nodes(nursery, tmp_path, hub, 4)
        watcher = services[0]
        transport = watcher.transport
        assert isinstance(transport, MemoryTransport)
        leaver, dying = KEYS[2].address, KEYS[3].address
        with trio.fail_after(20):
            await wait_until(lambda: all(len(s.core.membership.alive()) == 3 for s in services))
            assert leaver in watcher._queues  # it has been talking to both
            assert dying in watcher._queues
            await services[2].leave()
            await wait_until(lambda: leaver in transport.forgotten)
            assert leaver not in watcher._queues
            hub.down.add(dying)  # no goodbye: membership has to find out
            await wait_until(lambda: dying in transport.forgotten)
        assert KEYS[1].address not in transport.forgotten
        nursery.cancel_scope.cancel()
    for service in services:
        service.replica.close()


async def test_concurrent_local_writes_share_commits_and_each_gets_its_own_answer(
    tmp_path: Path,
) -> None:
    from node.ledger.admission import SubmitResult, own
    from node.ledger.op import Op, sign_op

    hub = MemoryHub()
    users = seeded_keys(40, seed=99)
    ops = [
        sign_op(u, NET, (T0_MS, 0), "account.create", {"name": f"u{i}"})
        for i, u in enumerate(users)
    ]
    results: dict[int, SubmitResult] = {}
    async with trio.open_nursery() as nursery:
        services = await start_nodes(nursery, tmp_path, hub, 2)
        writer = services[0]

        async def submit(index: int, made: Op) -> None:
            results[index] = await writer.submit_checked([own(made)])

        with trio.fail_after(20):
            async with trio.open_nursery() as writers:
                for index, made in enumerate(ops):
                    writers.start_soon(submit, index, made)
                writers.start_soon(submit, len(ops), ops[0])  # the same op twice, concurrently
            # Every writer was answered after its batch was durable, with its own result.
            for made in ops:
                assert writer.replica.store.has(made.id)
            accepted = [results[i].accepted for i in range(len(ops) + 1)]
            duplicates = [results[i].duplicates for i in range(len(ops) + 1)]
            assert sum(len(a) for a in accepted) == len(ops)
            assert sum(len(d) for d in duplicates) == 1
            assert writer.writes_committed == len(ops) + 1
            # Writes that waited while a commit was under way shared the next one.
            assert writer.commits < len(ops)
            # And the accepted ops were gossiped like any write.
            await wait_until(lambda: all(services[1].replica.has(made.id) for made in ops))
        nursery.cancel_scope.cancel()
    for service in services:
        service.replica.close()
