"""The formation-node command line, run as a real process."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

pytestmark = pytest.mark.real

CLI = [sys.executable, "-m", "node.cli"]


def _env(tmp_path: Path) -> dict[str, str]:
    # Never let a test touch the developer's real data dir.
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "FORMATION_NODE_DATA_DIR": ""}


def test_keygen_writes_a_keystore_other_wallets_open_and_prints_only_the_address(
    tmp_path: Path,
) -> None:
    (tmp_path / "pw").write_text("correct horse\n")
    out = tmp_path / "key.json"
    done = subprocess.run(
        [*CLI, "keygen", "--out", str(out), "--password-file", str(tmp_path / "pw")],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=True,
    )
    secret = Account.decrypt(json.loads(out.read_text()), "correct horse")
    assert done.stdout.strip() == Account.from_key(secret).address
    assert secret.hex() not in done.stdout + done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(
        [*CLI, "keygen", "--out", str(out), "--password-file", str(tmp_path / "pw")],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr


def _start(tmp_path: Path, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
    )


def _wait_running(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("running"):
            return lines
    raise AssertionError(
        f"node exited before running: {lines} {proc.stderr.read() if proc.stderr else ''}"
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_starts_on_defaults_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    data_dir = tmp_path / "node"
    proc = _start(tmp_path, data_dir)
    lines = _wait_running(proc)
    address = next(line.split()[1] for line in lines if line.strip().startswith("address"))
    assert str(data_dir) in "".join(lines)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "stopped cleanly" in out
    # Same key and store on the next start.
    proc = _start(tmp_path, data_dir)
    assert any(address in line for line in _wait_running(proc))
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_run_refuses_a_store_that_is_not_ours_without_touching_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    garbage = b"this is not a database" * 100
    (data_dir / "state.db").write_bytes(garbage)
    done = subprocess.run(
        [*CLI, "run", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error:")
    assert "state.db" in done.stderr
    assert "Traceback" not in done.stderr
    assert (data_dir / "state.db").read_bytes() == garbage


def test_init_and_config_show_report_the_devnet_profile_without_dialing(tmp_path: Path) -> None:
    data_dir = tmp_path / "devnet-node"
    done = subprocess.run(
        [*CLI, "init", "--network", "devnet", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=True,
    )
    assert "node address 0x" in done.stdout
    shown = subprocess.run(
        [*CLI, "config", "show", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=True,
    )
    config = json.loads(shown.stdout)
    assert config["network"] == "devnet"
    assert config["bootstrap"] == ["/ip4/3.214.9.18/tcp/53333", "/ip4/44.218.128.162/tcp/53333"]
    # The gateway stays on loopback unless the operator says otherwise; devnet agents are
    # reached on the mesh range only.
    assert config["gateway"] == "127.0.0.1:3004"
    assert config["agent_networks"] == ["10.0.0.0/8"]
    assert (data_dir / "node-key.json").exists()


def test_a_gateway_that_cannot_listen_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for where, needle in ((f"127.0.0.1:{port}", "in use"), ("nonsense", "HOST:PORT")):
            done = subprocess.run(
                [*CLI, "run", "--data-dir", str(tmp_path / "node"), "--gateway", where],
                capture_output=True,
                text=True,
                env=_env(tmp_path),
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            assert done.stderr.startswith("error:")
            assert needle in done.stderr
            assert "Traceback" not in done.stderr


def test_metrics_that_cannot_listen_are_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for where, needle in ((f"127.0.0.1:{port}", "in use"), ("127.0.0.1:abc", "HOST:PORT")):
            done = subprocess.run(
                [*CLI, "run", "--data-dir", str(tmp_path / "node"), "--metrics", where],
                capture_output=True,
                text=True,
                env=_env(tmp_path),
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            assert done.stderr.startswith("error:")
            assert "--metrics" in done.stderr
            assert needle in done.stderr
            assert "Traceback" not in done.stderr
