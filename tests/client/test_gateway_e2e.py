"""``form`` against a real node: a ``formation-node run`` process with its gateway on loopback."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

_SCRIPT = Path(sys.executable).parent / "formation-node"
NODE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "node.cli"]
FORM = [sys.executable, "-m", "node.client.cli"]
STARTUP_S_MAX = 60.0


def _env(tmp_path: Path) -> dict[str, str]:
    # Never touch the developer's data dir, key or gateway.
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "FORMATION_NODE_DATA_DIR": "",
    }
    for name in ("FORM_GATEWAY", "FORM_KEYSTORE", "FORM_PASSWORD"):
        env.pop(name, None)
    return env


@pytest.fixture
def gateway_url(tmp_path: Path) -> Iterator[str]:
    data_dir = tmp_path / "node"
    env = _env(tmp_path)
    log = (tmp_path / "node.log").open("w")  # a file, not a pipe: a pipe nobody reads can fill
    proc = subprocess.Popen(
        [*NODE, "run", "--data-dir", str(data_dir), "--gateway", "127.0.0.1:0",
         "--listen", "/ip4/127.0.0.1/tcp/0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_S_MAX
        url = None
        while url is None:
            assert proc.poll() is None, f"the node exited: {(tmp_path / 'node.log').read_text()}"
            assert time.monotonic() < deadline, "the node did not report a gateway in time"
            status = subprocess.run(
                [*NODE, "status", "--data-dir", str(data_dir), "--json"],
                capture_output=True,
                text=True,
                env=env,
                timeout=30,
            )
            if status.returncode == 0:
                url = json.loads(status.stdout).get("gateway")
            if url is None:
                time.sleep(0.2)  # the control socket appears a moment after start
        yield url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, (tmp_path / "node.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_form_creates_and_shows_an_account_on_a_real_node(tmp_path: Path, gateway_url: str) -> None:
    (tmp_path / "pw").write_text("correct horse\n")
    env = {**_env(tmp_path), "FORM_GATEWAY": gateway_url}

    def form(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FORM, "--password-file", str(tmp_path / "pw"), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    init = form("init")
    assert init.returncode == 0, init.stderr
    address = init.stdout.strip().lower()
    assert (tmp_path / "xdg-config" / "formation" / "form-key.json").exists()

    created = form("account", "create", "--name", "alice")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"created account {address} (op 0x")

    shown = form("account", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    account = json.loads(shown.stdout)
    assert (account["address"], account["name"]) == (address, "alice")

    again = form("account", "create")
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.startswith("error: ")
    assert again.stderr.endswith(" (exists)\n")

    status = form("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["health"]["status"] == "healthy"
