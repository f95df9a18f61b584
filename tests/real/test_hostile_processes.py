"""A hostile peer against a fog of real node processes on loopback.

Three ``formation-node run`` processes form a fog. The test process then joins as a hostile
libp2p peer (``node.p2p.transport`` with its own secp256k1 key, so it authenticates like any
node) and sends node 0 what a bad peer can put on the wire:

* frames whose contents are not packets (seeded random bytes);
* a well-formed packet that claims another key as its sender;
* a well-formed gossip packet from itself carrying a *forged* op (an honest account's op with
  its body altered, so the signature no longer matches) and a *well-signed but unauthorized*
  op (the hostile key signs ``node.leave`` for node 0);
* a stream with a malformed length prefix, and one whose frame is over the node's limit.

The hostile peer stays connected until node 0 has logged every refusal (hanging up earlier
could make the kernel discard unread bytes). Then a fourth honest node starts: its
``node.announce`` is the fresh honest op. The test checks through the control socket and
``formation-node status --json`` that every node holds it under one state digest, that no
node accepted the forged ops (nor holds them in its store, read after shutdown), and that all
processes lived throughout and exit with status 0.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from node.control import query
from node.devnet import LocalFog
from node.gossip import wire
from node.gossip.messages import Gossip, Packet
from node.identity.keys import eip191_hash
from node.ledger.digest import encode_uvarint
from node.ledger.op import sign_op
from node.p2p.transport import DEFAULT_PROTOCOL, TransportLimits, open_transport
from node.store.sqlite import Store
from tests.helpers import T0_MS, seeded_keys

pytestmark = pytest.mark.real

SEED = 4242
HOSTILE, HONEST_ACCOUNT = seeded_keys(2, seed=SEED)
GARBAGE_FRAMES = 3
STEP_TIMEOUT_S = 5.0
FOG_TIMEOUT_S = 15.0

WireOp = tuple[bytes, bytes]


def _bad_ops(network: str, victim: str) -> tuple[WireOp, WireOp]:
    """(a forged op whose signature does not match its body, a signed but unauthorized op)."""
    good = sign_op(HONEST_ACCOUNT, network, (T0_MS, 0), "account.create", {"name": "mallory"})
    # Same length and still canonical JSON: only the signature check can catch it.
    forged_body = good.body.replace(b'"mallory"', b'"alice!!"')
    assert forged_body != good.body
    unauthorized = sign_op(HOSTILE, network, (T0_MS, 1), "node.leave", {"node_id": victim})
    return (forged_body, good.sig), (unauthorized.body, unauthorized.sig)


async def _attack(
    victim_addr: str, victim: str, bad_ops: tuple[WireOp, WireOp], done: Callable[[], bool]
) -> None:
    rng = random.Random(SEED)
    # The attacker allows itself frames far over the node's limit.
    limits = TransportLimits(frame_bytes_max=64 * 2**20)
    async with open_transport(HOSTILE, ["/ip4/127.0.0.1/tcp/0"], limits=limits) as hostile:
        with trio.fail_after(STEP_TIMEOUT_S):
            assert await hostile.connect(victim_addr) == victim
            for _ in range(GARBAGE_FRAMES):
                await hostile.send(victim, b"\xf1" + rng.randbytes(rng.randrange(1, 2048)))
            spoofed = Packet(HONEST_ACCOUNT.address, (Gossip((bad_ops[1],)),))
            await hostile.send(victim, wire.encode(spoofed))
            await hostile.send(victim, wire.encode(Packet(HOSTILE.address, (Gossip(bad_ops),))))
        # Raw streams: a malformed (non-minimal) length prefix, then a frame over the node's
        # limit (4 MiB by default; the prefix declares 8 MiB and 64 KiB of it follow). The node
        # resets each stream; whether our write sees the reset first is a race, so errors are
        # expected here.
        peer_id = hostile._peers.get(victim)
        assert peer_id is not None
        oversized = encode_uvarint(8 * 2**20) + b"\x00" * (64 * 1024)
        for raw in (b"\x80\x00", oversized):
            with trio.fail_after(STEP_TIMEOUT_S):
                stream = await hostile._host.new_stream(peer_id, [DEFAULT_PROTOCOL])
                with contextlib.suppress(Exception):
                    await stream.write(raw)
                    while await stream.read(4096):
                        pass
        with trio.fail_after(STEP_TIMEOUT_S):
            while not done():  # noqa: ASYNC110 - the node's log is a file, not an event
                await trio.sleep(0.05)


def _log(fog: LocalFog, i: int) -> str:
    return (fog.root / f"n{i}.log").read_text(errors="replace")


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=STEP_TIMEOUT_S) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not exported at {url}")


def _status_json(fog: LocalFog, i: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--json", "--data-dir", str(fog.data_dir(i))],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def test_a_hostile_peer_cannot_break_a_fog_of_processes(tmp_path: Path) -> None:
    # No heartbeats: the only ops are the ones this test causes, so digests settle.
    fog = LocalFog(tmp_path, extra_args=("--heartbeat-s", "0"))
    try:
        for i in range(3):
            fog.start(i)
        fog.wait(lambda: fog.converged(3), timeout_s=FOG_TIMEOUT_S)
        victim_status = fog.status(0)
        assert victim_status is not None
        victim = victim_status["address"]
        bad_ops = _bad_ops(victim_status["network"], victim)
        bad_ids = [eip191_hash(body) for body, _ in bad_ops]

        def refused_all() -> bool:
            log = _log(fog, 0)
            return (
                "refused: bad_signature" in log
                and "refused: unauthorized" in log
                and log.count("dropped a bad packet") >= GARBAGE_FRAMES
                and "claiming to be from" in log
                and "non-minimal varint" in log
                and "(the frame limit)" in log
            )

        trio.run(_attack, fog.bootstrap, victim, bad_ops, refused_all)
        assert all(proc.poll() is None for proc in fog.procs.values()), "a node died"
        # The exporter refreshes once a second.
        fog.wait(
            lambda: (
                _metric(victim_status["metrics"], "formation_bad_packets_total")
                >= GARBAGE_FRAMES + 1
            ),
            timeout_s=STEP_TIMEOUT_S,
        )

        # A fresh honest op, written after the attack, still reaches everyone.
        fog.start(3)
        fog.wait(lambda: fog.converged(4), timeout_s=FOG_TIMEOUT_S)
        statuses = [_status_json(fog, i) for i in range(4)]
        assert len({s["state_digest"] for s in statuses}) == 1
        assert len({s["op_set_digest"] for s in statuses}) == 1
        # The four node.announce ops and the four nodes' mesh address claims, nothing else.
        assert {s["ops"] for s in statuses} == {8}
        bad_hex = {op_id.hex() for op_id in bad_ids}
        for i in range(4):
            arrivals = query(fog.data_dir(i), "arrivals")["arrivals"]
            assert len(arrivals) >= 2  # it did take ops from its peers ...
            assert not bad_hex & {op_id for op_id, _, _ in arrivals}  # ... but not these
        assert all(proc.poll() is None for proc in fog.procs.values()), "a node died"
    finally:
        fog.stop_all()
    assert [proc.returncode for proc in fog.procs.values()] == [0, 0, 0, 0]
    for i in range(4):
        with Store.open(fog.data_dir(i), network=victim_status["network"], create=False) as store:
            assert not any(store.has(op_id) for op_id in bad_ids)
            assert store.op_count() == 8  # 4 announces, 4 mesh address claims
