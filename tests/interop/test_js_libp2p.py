"""A js-libp2p peer against node.p2p.transport: TCP, Noise, Yamux and the gossip protocol.

js-libp2p runs in a Node.js subprocess (tests/interop/js/gossip_peer.mjs) with a secp256k1
identity, as a formation node has: it dials the Python node on loopback, sends one frame (a
gossip packet in node.gossip.wire's encoding) and waits for one frame back. The Python side
must see the sender as the Ethereum address of the JS key, which is the whole point: a node
written in JavaScript would be recognised by the same key. Install the JS side with
``npm ci --prefix tests/interop/js``; without it this test skips locally and fails under CI.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from node.gossip import wire
from node.gossip.messages import Packet, Ping
from node.p2p.transport import DEFAULT_PROTOCOL, open_transport, peer_id_of
from tests.helpers import JS_DIR, js_runtime, seeded_keys

pytestmark = pytest.mark.real

SCRIPT = JS_DIR / "gossip_peer.mjs"
PY_KEY, JS_KEY = seeded_keys(2, seed=61)
EXCHANGE_TIMEOUT_S = 20


def node_bin() -> str:
    return js_runtime("libp2p")


async def test_a_js_libp2p_peer_exchanges_gossip_frames_with_a_python_node() -> None:
    node = node_bin()
    from_js = wire.encode(Packet(JS_KEY.address, (Ping(7),)))
    from_py = wire.encode(Packet(PY_KEY.address, (Ping(8),)))
    async with open_transport(PY_KEY, ["/ip4/127.0.0.1/tcp/0"]) as py:
        command = {
            "dial": py.listen_addrs[0],
            "privateKey": JS_KEY.secret.hex(),
            "protocol": DEFAULT_PROTOCOL,
            "sendHex": from_js.hex(),
            "timeoutMs": EXCHANGE_TIMEOUT_S * 1000 // 2,
        }
        finished: dict[str, Any] = {}

        async def run_js() -> None:
            done = await trio.run_process(
                [node, str(SCRIPT), json.dumps(command)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            finished["stdout"] = done.stdout.decode()
            # A JS failure ends the test at once, with its message, not at the timeout.
            assert done.returncode == 0, f"{finished['stdout']}\n{done.stderr.decode()}"

        with trio.fail_after(EXCHANGE_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_js)
                sender, data = await py.inbox.receive()
                assert sender == JS_KEY.address  # the JS key's address, from the Noise handshake
                assert wire.decode(data) == Packet(JS_KEY.address, (Ping(7),))
                await py.send(sender, from_py)  # a stream we open, to the JS node's handler
    connected, received = (json.loads(line) for line in finished["stdout"].splitlines())
    assert connected == {
        "peerId": peer_id_of(JS_KEY),
        "remotePeer": py.peer_id,
        "encryption": "/noise",
        "multiplexer": "/yamux/1.0.0",
    }
    assert received == {"receivedHex": from_py.hex(), "from": py.peer_id}
