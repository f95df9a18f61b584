"""Real node processes on loopback: a fog forms from one bootstrap peer, ops reach everyone,
a node killed with -9 recovers from disk, and a node whose disk is gone gets the full state.

Each node announces itself with a signed ``node.announce`` op when it starts, so "every node
knows every node" is an op written on each process and replicated to all the others.
"""

from __future__ import annotations

import shutil
import signal
import urllib.request
from pathlib import Path

import pytest

from node.devnet import LocalFog

pytestmark = pytest.mark.real


def test_a_fog_of_five_processes_shares_state_and_survives_kill_and_disk_loss(
    tmp_path: Path,
) -> None:
    fog = LocalFog(tmp_path)
    try:
        for i in range(5):
            fog.start(i)
        fog.wait(lambda: fog.converged(5))
        status = fog.status(0)
        assert status is not None
        assert status["listen_addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
        with urllib.request.urlopen(status["metrics"], timeout=10) as response:
            exported = response.read().decode()
        assert "formation_peers " in exported
        assert any(line.startswith("formation_ops ") for line in exported.splitlines())

        # kill -9, then restart on the same data dir: state comes back from disk, and the
        # node catches up (its new announce reaches everyone; everyone's state matches).
        before = fog.status(3)
        assert before is not None
        fog.procs[3].kill()
        fog.procs[3].wait()
        fog.start(3)
        after = fog.status(3)
        assert after is not None
        assert after["ops"] >= before["ops"]  # nothing acknowledged was lost
        fog.wait(lambda: fog.converged(5))

        # Disk lost: the node comes back empty and receives the full state.
        fog.procs[4].send_signal(signal.SIGINT)
        fog.procs[4].wait(timeout=15)
        shutil.rmtree(fog.data_dir(4))
        fog.start(4)
        fog.wait(lambda: fog.converged(6))  # a new key, so a sixth node record
        # Membership news travels separately from ops: the new node's record can reach
        # everyone a moment before every node has seen the node itself alive (asserting it
        # at once failed about 1 run in 8, before and after the transport's peer eviction).
        fog.wait(
            lambda: all(
                s is not None and s["members_alive"] >= 4
                for s in (fog.status(i) for i in fog.procs)
            ),
            timeout_s=15,
        )
    finally:
        fog.stop_all()
    assert all(
        proc.returncode == 0
        for i, proc in fog.procs.items()
        if i != 3 or proc.returncode is not None
    )


def test_a_fog_over_quic_converges_and_stops_cleanly(tmp_path: Path) -> None:
    # --listen /ip4/127.0.0.1/udp/0/quic-v1: the same node key is the QUIC (TLS) identity.
    fog = LocalFog(
        tmp_path, listen="/ip4/127.0.0.1/udp/0/quic-v1", extra_args=("--heartbeat-s", "0")
    )
    try:
        for i in range(3):
            fog.start(i)
        fog.wait(lambda: fog.converged(3), timeout_s=30)
        status = fog.status(0)
        assert status is not None
        assert status["listen_addrs"][0].startswith("/ip4/127.0.0.1/udp/")
        assert "/quic-v1/p2p/" in status["listen_addrs"][0]
        assert status["peers"] == 2
    finally:
        fog.stop_all()
    assert [proc.returncode for proc in fog.procs.values()] == [0, 0, 0]
