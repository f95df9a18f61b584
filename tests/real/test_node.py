"""The composition root (``node.node``) run in-process, on loopback: no CLI, no signals.

Readiness is real (when ``run_node`` reports the node, the control socket answers, the
gateway serves and the node's announce op is in its state), ``node.stop()`` stops it cleanly
(socket removed, store closed), and a service that cannot start is a ``StartError`` (the
store is closed all the same).
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import trio

from node.config import load_config
from node.control import SOCKET_NAME, query
from node.node import Node, NodeSettings, StartError, open_home, run_node

pytestmark = pytest.mark.real


def _settings(
    data_dir: Path,
    gateway: str = "127.0.0.1:0",
    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",),
) -> NodeSettings:
    return NodeSettings.from_config(
        load_config(data_dir),
        data_dir,
        listen_addrs=listen_addrs,
        bootstrap=[],
        gateway=gateway,
        heartbeat_s=0,
        vmm="off",  # about the node's life; VMs have tests of their own (test_ship_*)
    )


async def test_run_node_is_ready_when_it_reports_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "n0"
    settings = _settings(data_dir)
    async with open_home(settings) as home:
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(run_node, home)
            status = await trio.to_thread.run_sync(query, data_dir, "status")
            assert status["address"] == home.key.address
            assert status["ops"] == 2  # its own node.announce and its mesh address claim
            assert node.gateway_url is not None
            assert status["gateway"] == node.gateway_url
            assert status["metrics"] == node.metrics_url
            async with httpx.AsyncClient() as client:
                health = await client.get(f"{node.gateway_url}/v1/health")
            assert health.status_code == 200
            node.stop()
        assert not (data_dir / SOCKET_NAME).exists()
        # The exporter's thread stopped with the node: its port no longer answers.
        metrics_port = int(node.metrics_url.rsplit(":", 1)[1].split("/")[0])
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", metrics_port), 1),
        ):
            pass
        store = home.replica.store
    assert store._conn is None  # closed by open_home


async def test_a_service_that_cannot_start_is_a_start_error_and_the_store_still_closes(
    tmp_path: Path,
) -> None:
    # (A gateway port in use is covered by tests/real/test_cli.py: in process, the old server
    # leaks the socket whose bind failed, a ResourceWarning here.)
    settings = _settings(tmp_path / "n0", listen_addrs=("/ip4/nonsense",))
    with pytest.RaisesGroup(pytest.RaisesExc(StartError, match="cannot listen")):
        async with open_home(settings) as home, trio.open_nursery() as nursery:
            await nursery.start(run_node, home)
    assert home.replica.store._conn is None


def test_a_bad_gateway_setting_is_a_start_error_before_anything_is_created(
    tmp_path: Path,
) -> None:
    with pytest.raises(StartError, match="HOST:PORT"):
        _settings(tmp_path / "n0", gateway="nonsense")
    assert not (tmp_path / "n0").exists()
