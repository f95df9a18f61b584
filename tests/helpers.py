"""Shared test helpers: seeded keys, op builders, and polling for Trio tests."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from node.identity.keys import NodeKey
from node.ledger.op import Op, sign_op

NET = "testnet"
T0_MS = 1_760_000_000_000


def seeded_keys(count: int, seed: int = 7) -> list[NodeKey]:
    rng = random.Random(seed)
    return [NodeKey(rng.randbytes(32)) for _ in range(count)]


def op(
    key: NodeKey, kind: str, payload: dict[str, Any], wall_ms: int = T0_MS, logical: int = 0
) -> Op:
    return sign_op(key, NET, (wall_ms, logical), kind, payload)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate`` holds (callers bound it with ``trio.fail_after``).

    For state owned by other tasks and threads (replicas, membership): there is no event to
    await.
    """
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.02)


JS_DIR = Path(__file__).resolve().parent / "interop" / "js"
JS_INSTALL = "npm ci --prefix tests/interop/js"


def js_runtime(package: str) -> str:
    """The ``node`` binary, with ``package`` installed in tests/interop/js.

    Without them a test skips locally and fails under CI (``CI`` set), where the JavaScript
    oracles are part of the contract.
    """
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "`node` is not on PATH (install Node.js >= 20 first)"
    elif not (JS_DIR / "node_modules" / package / "package.json").is_file():
        missing = f"{package} is not installed in {JS_DIR / 'node_modules'}"
    if missing is not None:
        message = f"{missing}; install it with: {JS_INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the JavaScript interop tests: {message}")
        pytest.skip(message)
    assert node is not None
    return node


Form = Callable[..., "subprocess.CompletedProcess[str]"]


def form_runner(tmp_path: Path, gateway: str, *, timeout_s: float) -> Form:
    """Run the real ``form`` CLI against ``gateway`` in its own key and config dirs (under
    ``tmp_path``, never the user's): ``run(*argv, gateway_url=...)`` -> CompletedProcess."""
    (tmp_path / "pw").write_text("correct horse\n")
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "FORMATION_NODE_DATA_DIR": "",
    }
    for name in ("FORM_GATEWAY", "FORM_KEYSTORE", "FORM_PASSWORD"):
        env.pop(name, None)

    def run(*argv: str, gateway_url: str = gateway) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FORM_CLI, "--gateway", gateway_url, "--password-file", str(tmp_path / "pw"), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
        )

    return run


FORM_CLI = [sys.executable, "-m", "node.client.cli"]


def dig_short(where: str, name: str, *, tcp: bool = False) -> list[str]:
    """``dig @where NAME A +short`` (over TCP with ``tcp``): the answers, one per line."""
    host, port = where.rsplit(":", 1)
    argv = ["dig", f"@{host}", "-p", port, name, "A", "+short", "+time=2", "+tries=2"]
    done = subprocess.run([*argv, *(["+tcp"] if tcp else [])], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.split() if line]
