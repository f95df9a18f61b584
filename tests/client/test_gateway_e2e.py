"""``form`` against a real node: a ``formation-node run`` process with its gateway on loopback."""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
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


Form = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def form(tmp_path: Path, gateway_url: str) -> Form:
    """Run ``form`` against the node, with a keystore and password of its own under tmp."""
    (tmp_path / "pw").write_text("correct horse\n")
    env = {**_env(tmp_path), "FORM_GATEWAY": gateway_url}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FORM, "--password-file", str(tmp_path / "pw"), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    return run


def test_form_creates_and_shows_an_account_on_a_real_node(tmp_path: Path, form: Form) -> None:
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


def test_form_publishes_a_model_and_lists_nodes_on_a_real_node(tmp_path: Path, form: Form) -> None:
    init = form("init")
    assert init.returncode == 0, init.stderr
    account = init.stdout.strip()
    assert form("account", "create", "--name", "alice").returncode == 0
    # Every signed request names its signer (X-Signer); the real gateway accepts it.
    published = form(
        "model", "publish", "--name", "llama", "--model-type", "llm", "--parameters", "7",
        "--context-length", "8192", "--price-per-1m-tokens", "20",
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published model 'llama' as ")
    model_id = published.stdout.split(" as ")[1].split()[0]
    shown = form("model", "show", model_id, "--json")
    assert shown.returncode == 0, shown.stderr
    model = json.loads(shown.stdout)
    assert (model["access"], model["parameters"], model["pricing"]) == (
        "public",
        7,
        {"price_per_1m_tokens": 20},
    )
    again = form("model", "publish", "--name", "llama", "--private")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"updated model 'llama' as {model_id} (op 0x")
    # A delegate signs with its own key: X-Signer is its address, X-Act-As the account's.
    made = form("key", "new", "--out", str(tmp_path / "ci.json"))
    assert made.returncode == 0, made.stderr
    granted = form("key", "grant", "--delegate", made.stdout.strip(), "--scopes", "model")
    assert granted.returncode == 0, granted.stderr
    acted = form(
        "--keystore", str(tmp_path / "ci.json"), "--act-as", account,
        "model", "publish", "--name", "llama", "--private", "--context-length", "4096",
    )  # fmt: skip
    assert acted.returncode == 0, acted.stderr
    assert acted.stdout.startswith(f"updated model 'llama' as {model_id} (op 0x")

    allowed = form("model", "allow", model_id, "--address", "0x" + "77" * 20)
    assert allowed.returncode == 0, allowed.stderr
    deleted = form("model", "delete", "--name", "llama")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(form("model", "list", "--json").stdout)["count"] == 0

    info = json.loads(form("node", "info", "--json").stdout)
    listed = form("node", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("NODE ID ")
    assert info["address"] in listed.stdout
