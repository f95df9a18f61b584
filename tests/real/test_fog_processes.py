"""Real node processes on loopback: a fog forms from one bootstrap peer, ops reach everyone,
a node killed with -9 recovers from disk, and a node whose disk is gone gets the full state.

Each node announces itself with a signed ``node.announce`` op when it starts, so "every node
knows every node" is an op written on each process and replicated to all the others.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.control import ControlError, query

pytestmark = pytest.mark.real

CLI = [sys.executable, "-m", "node.cli"]


class Fog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.retired: list[subprocess.Popen[str]] = []
        self.bootstrap = ""

    def data_dir(self, i: int) -> Path:
        return self.root / f"n{i}"

    def start(self, i: int) -> None:
        args = [
            *CLI,
            "run",
            "--data-dir",
            str(self.data_dir(i)),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ]
        if self.bootstrap:
            args += ["--bootstrap", self.bootstrap]
        env = {**os.environ, "XDG_DATA_HOME": str(self.root / "xdg")}
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        if i in self.procs:
            self.retired.append(self.procs[i])
        self.procs[i] = proc
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip().startswith("listen") and not self.bootstrap:
                # As operators write it: host and port, no /p2p/<peer id>.
                self.bootstrap = line.split()[1].split("/p2p/")[0]
            if line.startswith("running"):
                return
        raise AssertionError(f"node {i} exited before running")

    def status(self, i: int) -> dict[str, Any] | None:
        try:
            return query(self.data_dir(i), "status")
        except (ControlError, OSError, ValueError):
            return None

    def wait(self, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; statuses: {[self.status(i) for i in self.procs]}")
            time.sleep(0.2)

    def converged(self, count: int) -> bool:
        statuses = [self.status(i) for i in self.procs]
        return all(s is not None and s["nodes_known"] == count for s in statuses) and (
            len({s["state_digest"] for s in statuses if s is not None}) == 1
        )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in [*self.procs.values(), *self.retired]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def test_a_fog_of_five_processes_shares_state_and_survives_kill_and_disk_loss(
    tmp_path: Path,
) -> None:
    fog = Fog(tmp_path)
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
        statuses = [fog.status(i) for i in fog.procs]
        assert all(s is not None and s["members_alive"] >= 4 for s in statuses)
    finally:
        fog.stop_all()
    assert all(
        proc.returncode == 0
        for i, proc in fog.procs.items()
        if i != 3 or proc.returncode is not None
    )
