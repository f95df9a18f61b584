"""``form`` against a real node: a ``formation-node run`` process with its gateway on loopback."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.devnet import LocalFog

pytestmark = pytest.mark.real

FORM = [sys.executable, "-m", "node.client.cli"]


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
    (tmp_path / "fog").mkdir()
    fog = LocalFog(tmp_path / "fog")
    try:
        fog.start(0)
        yield str((fog.status(0) or {})["gateway"])
    finally:
        fog.stop_all()
    assert fog.procs[0].returncode == 0, fog.log(0)


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
