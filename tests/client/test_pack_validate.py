"""``form pack validate``: the node's parser and limits, plus the COPY sources on disk; exit 0 with
one summary line, exit 1 with every error as PATH:LINE:COL: message (or as JSON)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node.client import cli
from node.pack.formfile import DEVNET, FormfileError, parse
from tests.client.fake_gateway import NOW_S, FakeGateway, answer

OK_DIR = Path(__file__).parent.parent / "data" / "formfiles" / "ok"
FORMFILE = (
    "NAME web\n"
    "USER username:dev passwd:pw sudo:true\n"
    "VCPU 2\n"
    "MEM 1024\n"
    "COPY ./app /app\n"
    "INSTALL python3\n"
    "RUN echo hi > /app/hello\n"
    "EXPOSE 8000 8443\n"
    'ENTRYPOINT ["python3", "-m", "http.server"]\n'
)


@dataclass
class Ran:
    status: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("FORM_GATEWAY", "FORM_KEYSTORE", "FORM_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def form(gateway: FakeGateway, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> Ran:
        status = cli.main(list(argv), transport=gateway.transport, clock=lambda: NOW_S + 0.5)
        captured = capsys.readouterr()
        return Ran(status, captured.out, captured.err)

    return run


def _project(root: Path, text: str = FORMFILE) -> Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "app" / "server.py").write_text("print('hi')\n")
    path = root / "Formfile"
    path.write_text(text)
    return path


def _parse_errors(text: str, path: Path, **kw: Any) -> list[str]:
    with pytest.raises(FormfileError) as caught:
        parse(text, path=str(path), **kw)
    return [str(d) for d in caught.value.diagnostics]


def test_a_valid_formfile_exits_0_with_one_summary_line(
    tmp_path: Path, form: Any, gateway: FakeGateway
) -> None:
    path = _project(tmp_path)
    ran = form("pack", "validate", str(path), "--limits", "devnet")
    assert (ran.status, ran.err) == (0, "")
    assert ran.out == (
        f"{path}: valid (devnet limits): web, 2 vCPU, 1024 MB memory, 5 GB disk, "
        "3 steps, ports 8000,8443\n"
    )
    assert gateway.seen == []  # --limits given: no request at all


def test_the_default_is_the_formfile_here_and_a_directory_means_its_formfile(
    tmp_path: Path, form: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    here = form("pack", "validate", "--limits", "mainnet")
    assert here.status == 0, here.err
    assert here.out.startswith("Formfile: valid (mainnet limits): web,")
    there = form("pack", "validate", str(tmp_path), "--limits", "mainnet")
    assert there.status == 0, there.err
    assert there.out.startswith(f"{tmp_path / 'Formfile'}: valid")


def test_without_limits_the_gateways_network_decides(
    tmp_path: Path, form: Any, gateway: FakeGateway
) -> None:
    # The seed's llm-model-deployment asks 4 vCPUs, 16 GB and 50 GB: too much for a devnet.
    root = tmp_path / "llm"
    root.mkdir()
    path = root / "Formfile"
    shutil.copy(OK_DIR / "llm-model-deployment.Formfile", path)
    (root / "model").mkdir()
    text = path.read_text()
    gateway.on("GET", "/v1/node/info", answer(200, {"network": "devnet"}))
    refused = form("pack", "validate", str(path))
    assert refused.status == 1
    assert refused.out == ""
    assert refused.err.splitlines() == _parse_errors(text, path, limits=DEVNET)
    assert len(refused.err.splitlines()) == 3
    assert [s.signer for s in gateway.seen] == [None]  # asked unsigned, no key needed
    gateway.on("GET", "/v1/node/info", answer(200, {"network": "mainnet"}))
    accepted = form("pack", "validate", str(path))
    assert accepted.status == 0, accepted.err
    assert "llm-model-deployment, 4 vCPU, 16384 MB memory, 50 GB disk" in accepted.out


def test_no_gateway_means_mainnet_limits_and_says_so(tmp_path: Path, form: Any) -> None:
    path = _project(tmp_path)  # the fake gateway has no /node/info: it answers 404
    ran = form("pack", "validate", str(path))
    assert ran.status == 0
    assert "valid (mainnet limits)" in ran.out
    assert ran.err.startswith("note: could not ask the gateway for its network")
    assert "pass --limits" in ran.err


def test_every_parse_error_is_listed_as_path_line_col(tmp_path: Path, form: Any) -> None:
    text = "NAME web\nVCPU 3\nFROM debian\nEXPOSE 0\n"
    path = _project(tmp_path, text)
    ran = form("pack", "validate", str(path), "--limits", "devnet")
    assert ran.status == 1
    assert ran.out == ""
    lines = ran.err.splitlines()
    assert lines == _parse_errors(text, path, limits=DEVNET)
    assert [line.split(":")[1] for line in lines] == ["2", "3", "4"]
    assert all(line.startswith(f"{path}:") for line in lines)


def test_missing_copy_sources_are_errors_on_their_line_and_column(
    tmp_path: Path, form: Any
) -> None:
    text = (
        "NAME web\nCOPY ./app /app\nCOPY   conf/nginx.conf /etc/nginx/nginx.conf\nCOPY data /data\n"
    )
    path = _project(tmp_path, text)
    (tmp_path / "data").mkdir()
    ran = form("pack", "validate", str(path), "--limits", "mainnet")
    assert ran.status == 1
    assert ran.err == (
        f"{path}:3:8: COPY source 'conf/nginx.conf' does not exist under {tmp_path}\n"
    )


def test_a_copy_source_that_links_out_of_the_directory_is_refused(
    tmp_path: Path, form: Any
) -> None:
    root = tmp_path / "project"
    outside = tmp_path / "secret"
    outside.mkdir()
    path = _project(root, "NAME web\nCOPY keys /keys\n")
    (root / "keys").symlink_to(outside)
    ran = form("pack", "validate", str(path), "--limits", "mainnet")
    assert ran.status == 1
    assert ran.err == f"{path}:2:6: COPY source 'keys' leads outside {root} (a symlink?)\n"


def test_json_has_valid_errors_and_summary(tmp_path: Path, form: Any) -> None:
    path = _project(tmp_path)
    ok = form("pack", "validate", str(path), "--limits", "mainnet", "--json")
    assert ok.status == 0
    assert json.loads(ok.out) == {
        "valid": True,
        "limits": "mainnet",
        "errors": [],
        "summary": {
            "name": "web",
            "vcpus": 2,
            "memory_mb": 1024,
            "disk_gb": 5,
            "gpus": 0,
            "users": ["dev"],
            "steps": 3,
            "ports": [8000, 8443],
            "entrypoint": ["python3", "-m", "http.server"],
        },
    }
    bad_text = "NAME web\nVCPU 0\nUSER username:Root passwd:x\n"
    path.write_text(bad_text)
    bad = form("pack", "validate", str(path), "--limits", "mainnet", "--json")
    assert bad.status == 1
    answer_ = json.loads(bad.out)
    assert (answer_["valid"], answer_["summary"]) == (False, None)
    assert [
        f"{e['path']}:{e['line']}:{e['col']}: {e['message']}" for e in answer_["errors"]
    ] == _parse_errors(bad_text, path)


def test_bytes_that_are_not_utf8_are_a_located_error_not_a_crash(tmp_path: Path, form: Any) -> None:
    path = tmp_path / "Formfile"
    path.write_bytes(b"NAME web\nRUN echo \xff\n")
    ran = form("pack", "validate", str(path), "--limits", "mainnet")
    assert ran.status == 1
    assert ran.err.startswith(f"{path}:2:")


def test_a_missing_formfile_is_a_usage_error(tmp_path: Path, form: Any) -> None:
    ran = form("pack", "validate", str(tmp_path / "nope"), "--limits", "mainnet")
    assert ran.status == 2
    assert ran.err == (
        f"error: no Formfile at {tmp_path / 'nope'}; pass its path, or run where it is\n"
    )


def test_help_names_the_path_the_limits_and_the_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["pack", "validate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default ./Formfile" in text
    assert "{devnet,mainnet}" in text
    assert "PATH:LINE:COL" in text
    assert cli.main(["pack", "--help"]) == 0
    group = capsys.readouterr().out
    assert all(name in group for name in ("validate", "build", "status"))
