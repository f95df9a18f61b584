"""A running fog of ``formation-node run`` processes on loopback, for the real tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from node.devnet import LocalFog


@contextlib.contextmanager
def running_fog(tmp_path: Path, nodes: int, converge_s_max: float) -> Iterator[LocalFog]:
    """``nodes`` nodes (no heartbeats, so op counts only move with the test's writes), started
    and converged; stopped after, and each must have exited cleanly."""
    fog = LocalFog(tmp_path, extra_args=("--heartbeat-s", "0"))
    try:
        for i in range(nodes):
            fog.start(i)
        fog.wait(lambda: fog.converged(nodes), timeout_s=converge_s_max)
        yield fog
    finally:
        fog.stop_all()
    assert [proc.returncode for proc in fog.procs.values()] == [0] * nodes
