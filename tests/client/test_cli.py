"""The ``form`` command line against a fake gateway: the request each command sends and what
it prints, for people and with --json; exit statuses and error lines."""

import io
import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from node.client import cli
from node.identity.keystore import write_keystore
from tests.client.fake_gateway import NOW_S, FakeGateway, answer, refuse
from tests.helpers import seeded_keys

ALICE, BOB = seeded_keys(2, seed=63)
PASSWORD = "correct horse battery staple"
LIGHT = 1024  # scrypt n for test keystores: a real key keeps geth's 2^18
AGENT = "ab" * 32
BUILD = "ef" * 32
INSTANCE = "cd" * 20
OP = "0x" + "12" * 32
WHEN = "2026-09-21 14:13:20 UTC"  # NOW_S (and NOW_S * 1000 ms)
GATEWAY = "http://127.0.0.1:3004"

ACCOUNT = {
    "address": ALICE.address,
    "name": "alice",
    "description": None,
    "owned_instances": [INSTANCE],
    "owned_agents": [],
    "owned_models": [],
    "created_at": NOW_S * 1000,
    "updated_at": NOW_S * 1000,
}
MODEL = "9a" * 32
MODEL_OBJ = {
    "model_id": MODEL,
    "owner_id": ALICE.address,
    "name": "llama",
    "description": "a small llm",
    "model_type": "llm",
    "parameters": 7_000_000_000,
    "context_length": 8192,
    "pricing": {"price_per_1m_tokens": 20},
    "access": "public",
    "allow_list": [],
    "created_at": NOW_S * 1000,
    "updated_at": NOW_S * 1000,
}
CAPACITY = {
    "cpu_total_cores": 8,
    "cpu_available_millicores": 6000,
    "memory_total_bytes": 2**34,
    "memory_available_bytes": 2**33,
    "storage_total_bytes": 2**40,
    "storage_available_bytes": 3 * 2**38,
}
INSTANCE_OBJ = {
    "instance_id": INSTANCE,
    "build_id": BUILD,
    "instance_owner": ALICE.address,
    "name": "web",
    "node_id": None,
    "status": None,
    "formnet_ip": None,
    "desired_state": "running",
}
AGENT_OBJ = {
    "agent_id": AGENT,
    "owner_id": ALICE.address,
    "name": "echo",
    "description": "says it back",
    "pricing": {"price_per_request": 3},
    "access": "public",
    "allow_list": [],
    "endpoint": {"host": "127.0.0.1", "port": 8080, "path": "/run"},
}


@dataclass
class Ran:
    status: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never touch the developer's real key or gateway.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("FORM_GATEWAY", "FORM_KEYSTORE", "FORM_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "_KEYSTORE_KW", {"work_factor": LIGHT})


def default_keystore(tmp_path: Path) -> Path:
    return tmp_path / "config" / "formation" / "form-key.json"


@pytest.fixture
def alice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Alice's keystore at the default place, its password in FORM_PASSWORD."""
    path = default_keystore(tmp_path)
    path.parent.mkdir(parents=True)
    write_keystore(path, ALICE, PASSWORD, work_factor=LIGHT)
    monkeypatch.setenv("FORM_PASSWORD", PASSWORD)
    return path


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


def table(*rows: str) -> str:
    return "".join(row + "\n" for row in rows)


# ------------------------------------------------------------------------------ keys


def test_init_writes_a_keystore_wallets_open_and_prints_only_the_address(
    tmp_path: Path, form: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORM_PASSWORD", PASSWORD)
    ran = form("init")
    assert ran.status == 0
    path = default_keystore(tmp_path)
    secret = Account.decrypt(json.loads(path.read_text()), PASSWORD)
    assert ran.out == Account.from_key(secret).address + "\n"
    assert f"wrote {path}" in ran.err
    assert secret.hex() not in ran.out + ran.err
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_init_refuses_to_overwrite_a_key(alice: Path, form: Any) -> None:
    before = alice.read_bytes()
    ran = form("init")
    assert ran.status == 2
    assert ran.err.startswith(f"error: {alice} already exists; `form init` never overwrites")
    assert alice.read_bytes() == before


def test_init_json_and_a_password_file(tmp_path: Path, form: Any) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    out = tmp_path / "elsewhere" / "k.json"
    ran = form("--json", "init", "--keystore", str(out), "--password-file", str(tmp_path / "pw"))
    assert ran.status == 0
    shown = json.loads(ran.out)
    assert shown["keystore"] == str(out)
    secret = Account.decrypt(json.loads(out.read_text()), "s3cret")
    assert shown["address"] == Account.from_key(secret).address.lower()


def test_key_new_makes_a_delegate_keystore_and_says_how_to_grant_it(
    tmp_path: Path, form: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORM_PASSWORD", "delegate pw")
    out = tmp_path / "ci-key.json"
    ran = form("key", "new", "--out", str(out))
    assert ran.status == 0
    address = Account.from_key(Account.decrypt(json.loads(out.read_text()), "delegate pw")).address
    assert ran.out == address + "\n"
    assert f"form key grant --delegate {address.lower()} --scopes read" in ran.err
    assert form("key", "new", "--out", str(out)).status == 2


def test_key_grant_sends_scopes_and_an_absolute_expiry(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on("POST", "/v1/key/grant", answer(200, {"op_id": OP, "grant": {}}))
    ran = form(
        "key",
        "grant",
        "--delegate",
        BOB.address.upper().replace("0X", "0x"),
        "--scopes",
        "instance, agent,read,agent",
        "--spend-cap",
        "100",
        "--label",
        "ci",
    )
    assert ran.status == 0, ran.err
    assert gateway.last.signer == ALICE.address
    assert gateway.last.json == {
        "delegate": BOB.address,
        "scopes": ["instance", "agent", "read"],
        "expires_s": NOW_S + 24 * 3600,
        "spend_cap": 100,
        "label": "ci",
    }
    assert (
        ran.out
        == f"granted {BOB.address} instance,agent,read until 2026-09-22 14:13:20 UTC (op {OP})\n"
    )

    form("key", "grant", "--delegate", BOB.address, "--scopes", "read", "--expires-in", "30m")
    assert gateway.last.json == {
        "delegate": BOB.address,
        "scopes": ["read"],
        "expires_s": NOW_S + 1800,
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--scopes", "read,root"],
            "unknown root; choose from account,instance,agent,model,read,hire",
        ),
        (["--scopes", ","], "none given"),
        (["--scopes", "read", "--expires-in", "soon"], "is not a duration"),
        (["--scopes", "read", "--expires-in", "0h"], "is not a duration"),
        (["--scopes", "read", "--spend-cap", "-1"], "cannot be negative"),
    ],
)
def test_key_grant_usage_errors_send_nothing(
    alice: Path, gateway: FakeGateway, form: Any, argv: list[str], message: str
) -> None:
    ran = form("key", "grant", "--delegate", BOB.address, *argv)
    assert ran.status == 2
    assert message in ran.err
    assert gateway.seen == []


def test_key_revoke_and_list(alice: Path, gateway: FakeGateway, form: Any) -> None:
    gateway.on("POST", "/v1/key/revoke", answer(200, {"op_id": OP}))
    gateway.on(
        "GET",
        "/v1/key/list",
        answer(
            200,
            {
                "count": 1,
                "keys": [
                    {
                        "delegate": BOB.address,
                        "scopes": ["read", "agent"],
                        "expires_s": NOW_S,
                        "spend_cap": None,
                        "label": "ci",
                        "revoked": False,
                    }
                ],
            },
        ),
    )
    ran = form("key", "revoke", "--delegate", BOB.address)
    assert (ran.status, ran.out) == (0, f"revoked {BOB.address} (op {OP})\n")
    assert gateway.last.json == {"delegate": BOB.address}
    ran = form("key", "list")
    assert ran.out == table(
        "DELEGATE                                    SCOPES       EXPIRES                  SPEND CAP  LABEL  REVOKED",
        f"{BOB.address}  read, agent  {WHEN}  -          ci     no",
    )


# -------------------------------------------------------------------------- accounts


def test_account_create_signs_the_body_and_prints_the_account(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on("POST", "/v1/account/create", answer(201, {"op_id": OP, "account": ACCOUNT}))
    ran = form("account", "create", "--name", "alice")
    assert ran.status == 0, ran.err
    assert gateway.last.body == b'{"name":"alice"}'
    assert gateway.last.signer == ALICE.address
    assert ran.out == table(
        f"created account {ALICE.address} (op {OP})",
        f"address          {ALICE.address}",
        "name             alice",
        "description      -",
        f"owned_instances  {INSTANCE}",
        "owned_agents     -",
        "owned_models     -",
        f"created_at       {WHEN}",
        f"updated_at       {WHEN}",
    )


def test_account_create_json_prints_the_gateway_s_answer(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    reply = {"op_id": OP, "account": ACCOUNT}
    gateway.on("POST", "/v1/account/create", answer(201, reply))
    ran = form("account", "create", "--json", "--description", "hi")
    assert json.loads(ran.out) == reply
    assert gateway.last.json == {"description": "hi"}


def test_an_existing_account_is_one_error_line_and_status_1(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on(
        "POST",
        "/v1/account/create",
        refuse(409, "exists", f"account {ALICE.address} already exists"),
    )
    ran = form("account", "create")
    assert (ran.status, ran.out) == (1, "")
    assert ran.err == f"error: account {ALICE.address} already exists (exists)\n"


def test_account_show_defaults_to_the_own_account(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on("GET", f"/v1/account/{ALICE.address}/get", answer(200, ACCOUNT))
    gateway.on("GET", f"/v1/account/{BOB.address}/get", answer(200, {"address": BOB.address}))
    assert form("account", "show").out.startswith(f"address          {ALICE.address}\n")
    ran = form("account", "show", BOB.address.upper()[2:])
    assert ran.out == f"address  {BOB.address}\n"
    assert gateway.last.signer == ALICE.address


def test_a_delegate_acts_for_the_account_named_by_act_as(
    tmp_path: Path, gateway: FakeGateway, form: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob_key = tmp_path / "bob.json"
    write_keystore(bob_key, BOB, "bob pw", work_factor=LIGHT)
    (tmp_path / "bob.pw").write_text("bob pw")
    gateway.on("GET", f"/v1/account/{ALICE.address}/get", answer(200, ACCOUNT))
    ran = form(
        "--act-as",
        ALICE.address,
        "account",
        "show",
        "--keystore",
        str(bob_key),
        "--password-file",
        str(tmp_path / "bob.pw"),
    )
    assert ran.status == 0, ran.err
    assert gateway.last.signer == BOB.address
    assert gateway.last.headers["x-act-as"] == ALICE.address
    # The signing key is named, not the account it acts for.
    assert gateway.last.headers["x-signer"] == BOB.address


def test_every_signed_command_names_its_signer(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on("GET", "/v1/key/list", answer(200, {"count": 0, "keys": []}))
    gateway.on("GET", "/v1/agents", answer(200, {"count": 0, "agents": []}))
    assert form("key", "list").status == 0
    assert gateway.last.headers["x-signer"] == ALICE.address
    assert gateway.last.signer == ALICE.address
    assert form("agent", "list").status == 0
    assert "x-signer" not in gateway.last.headers  # unsigned: nothing to name


def test_a_wrong_signer_refusal_is_one_line_and_status_1(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on(
        "GET",
        "/v1/key/list",
        refuse(
            401, "wrong_signer", "the request says it is signed by 0x1 but the signature is 0x2's"
        ),
    )
    ran = form("key", "list")
    assert (ran.status, ran.out) == (1, "")
    assert ran.err == (
        "error: the request says it is signed by 0x1 but the signature is 0x2's (wrong_signer)\n"
    )


def test_account_update_needs_something_to_change(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    ran = form("account", "update")
    assert (ran.status, gateway.seen) == (2, [])
    assert "nothing to update" in ran.err
    gateway.on("POST", "/v1/account/update", answer(200, {"op_id": OP, "account": ACCOUNT}))
    ran = form("account", "update", "--name", "al")
    assert ran.out.startswith(f"updated account {ALICE.address} (op {OP})\n")
    assert gateway.last.json == {"name": "al"}


def test_account_delete_needs_yes(alice: Path, gateway: FakeGateway, form: Any) -> None:
    assert form("account", "delete").status == 2
    assert gateway.seen == []
    gateway.on("POST", "/v1/account/delete", answer(200, {"op_id": OP}))
    ran = form("account", "delete", "--yes")
    assert ran.out == f"deleted account {ALICE.address} (op {OP})\n"
    assert gateway.last.body == b"{}"


def test_account_list_table(alice: Path, gateway: FakeGateway, form: Any) -> None:
    gateway.on("GET", "/v1/account/list", answer(200, {"count": 1, "accounts": [ACCOUNT]}))
    assert form("account", "list").out == table(
        "ADDRESS                                     NAME   INSTANCES  AGENTS  MODELS",
        f"{ALICE.address}  alice  1          0       0",
    )


# ------------------------------------------------------------------------- instances


def test_manage_create_sends_the_formfile_and_resources(
    alice: Path, tmp_path: Path, gateway: FakeGateway, form: Any
) -> None:
    formfile = tmp_path / "Formfile"
    formfile.write_text('NAME web\nVCPU 2\nENTRYPOINT ["/bin/app"]\n')
    reply = {
        "op_id": OP,
        "instance_id": INSTANCE,
        "build_id": BUILD,
        "status": None,
        "instance": INSTANCE_OBJ,
    }
    gateway.on("POST", "/v1/instance/create", answer(201, reply))
    ran = form(
        "manage", "create", "--name", "web", "--formfile", str(formfile), "--vcpus", "2",
        "--memory-mb", "2048",
    )  # fmt: skip
    assert ran.status == 0, ran.err
    assert gateway.last.json == {
        "name": "web",
        "formfile": formfile.read_text(),
        "resources": {"vcpus": 2, "memory_mb": 2048},
    }
    assert ran.out == table(
        "created instance 'web'",
        f"instance_id  {INSTANCE}",
        f"build_id     {BUILD}",
        "status       -",
        f"op_id        {OP}",
    )


def test_manage_create_checks_the_formfile_first_and_sends_nothing_when_invalid(
    alice: Path, tmp_path: Path, gateway: FakeGateway, form: Any
) -> None:
    formfile = tmp_path / "Formfile"
    formfile.write_text("NAME web\nVCPU 999\nFROBNICATE x\n")
    gateway.on("GET", "/v1/node/info", answer(200, {"network": "devnet"}))
    ran = form("manage", "create", "--name", "web", "--formfile", str(formfile))
    assert ran.status == 1
    lines = ran.err.splitlines()
    assert lines[0].startswith(f"{formfile}:2:")
    assert "devnet" in lines[0]
    assert lines[1].startswith(f"{formfile}:3:1:")
    assert [r.target for r in gateway.seen] == ["/v1/node/info"]  # no create was sent


def test_manage_create_hashes_a_plain_password_before_it_leaves(
    alice: Path, tmp_path: Path, gateway: FakeGateway, form: Any
) -> None:
    formfile = tmp_path / "Formfile"
    formfile.write_text("NAME web\n# the app user\nUSER username:app passwd:hunter2\n")
    gateway.on("GET", "/v1/node/info", answer(200, {"network": "mainnet"}))
    gateway.on("POST", "/v1/instance/create", answer(201, {"op_id": OP, "instance_id": INSTANCE}))
    ran = form("manage", "create", "--name", "web", "--formfile", str(formfile))
    assert ran.status == 0, ran.err
    sent = gateway.last.json["formfile"]
    assert "hunter2" not in sent
    assert sent.splitlines()[:2] == ["NAME web", "# the app user"]  # the user's own text
    assert sent.splitlines()[2].startswith("USER username:app passwd:$6$")


def test_manage_create_without_the_formfile_is_a_usage_error(
    alice: Path, tmp_path: Path, gateway: FakeGateway, form: Any
) -> None:
    ran = form("manage", "create", "--name", "web", "--formfile", str(tmp_path / "nope"))
    assert ran.status == 2
    assert ran.err == f"error: --formfile {tmp_path / 'nope'} does not exist\n"
    assert gateway.seen == []


def test_manage_list_get_and_ips(alice: Path, gateway: FakeGateway, form: Any) -> None:
    running = {
        **INSTANCE_OBJ,
        "status": "Started",
        "node_id": BOB.address,
        "formnet_ip": "10.0.0.7",
    }
    gateway.on(
        "GET",
        "/v1/instance/list",
        answer(200, {"success": True, "count": 1, "instances": [running]}),
    )
    gateway.on("GET", f"/v1/instance/{INSTANCE}/get", answer(200, running))
    gateway.on(
        "GET",
        f"/v1/instance/{BUILD}/get_by_build_id",
        answer(200, {"count": 1, "instances": [running]}),
    )
    gateway.on("GET", f"/v1/instance/{BUILD}/get_instance_ips", answer(200, {"build_id": BUILD, "ips": ["10.0.0.7", "10.0.0.8"]}))  # fmt: skip
    listing = table(
        "INSTANCE ID                               NAME  STATUS   DESIRED  NODE                                        IP",
        f"{INSTANCE}  web   Started  running  {BOB.address}  10.0.0.7",
    )
    assert form("manage", "list").out == listing
    assert form("manage", "get", "--build-id", BUILD).out == listing
    shown = form("manage", "get", "--id", INSTANCE).out
    assert f"instance_id     {INSTANCE}\n" in shown
    assert "formnet_ip      10.0.0.7\n" in shown
    assert form("manage", "get-ip", "--build-id", BUILD).out == "10.0.0.7\n10.0.0.8\n"
    assert json.loads(form("manage", "get-ip", "--build-id", BUILD, "--json").out)["ips"] == [
        "10.0.0.7",
        "10.0.0.8",
    ]
    assert form("manage", "get").status == 2  # --id or --build-id


def test_manage_get_ip_says_when_there_is_none_yet(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on("GET", f"/v1/instance/{BUILD}/get_instance_ips", answer(200, {"build_id": BUILD, "ips": []}))  # fmt: skip
    ran = form("manage", "get-ip", "--build-id", BUILD)
    assert (ran.status, ran.out) == (0, "")
    assert "no IPs yet" in ran.err


@pytest.mark.parametrize("action", ["stop", "start", "delete"])
def test_manage_stop_start_delete(
    alice: Path, gateway: FakeGateway, form: Any, action: str
) -> None:
    gateway.on("POST", f"/v1/instance/{INSTANCE}/{action}", answer(200, {"op_id": OP, "instance": INSTANCE_OBJ}))  # fmt: skip
    ran = form("manage", action, "--id", INSTANCE)
    assert ran.out == f"{action} requested for instance {INSTANCE} (op {OP})\n"
    assert gateway.last.body == b"{}"
    assert gateway.last.signer == ALICE.address


# ---------------------------------------------------------------------------- agents


def test_agent_publish_sends_the_listing(alice: Path, gateway: FakeGateway, form: Any) -> None:
    gateway.on("POST", "/v1/agents/create", answer(201, {"op_id": OP, "agent_id": AGENT, "agent": AGENT_OBJ}))  # fmt: skip
    ran = form(
        "agent", "publish", "--name", "echo", "--description", "says it back",
        "--endpoint-host", "127.0.0.1", "--endpoint-port", "8080", "--endpoint-path", "/run",
        "--price-per-request", "3", "--tag", "demo", "--tag", "text",
    )  # fmt: skip
    assert ran.status == 0, ran.err
    assert gateway.last.json == {
        "name": "echo",
        "access": "public",
        "description": "says it back",
        "endpoint": {"host": "127.0.0.1", "port": 8080, "path": "/run"},
        "pricing": {"price_per_request": 3},
        "tags": ["demo", "text"],
    }
    assert ran.out == f"published agent 'echo' as {AGENT} (op {OP})\n"


def test_agent_publish_again_updates_the_listing(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on("POST", "/v1/agents/create", refuse(409, "exists", "agent echo exists"))
    gateway.on("POST", "/v1/agents/update", answer(200, {"op_id": OP, "agent_id": AGENT, "agent": AGENT_OBJ}))  # fmt: skip
    ran = form("agent", "publish", "--name", "echo", "--private")
    assert ran.out == f"updated agent 'echo' as {AGENT} (op {OP})\n"
    assert [s.target for s in gateway.seen] == ["/v1/agents/create", "/v1/agents/update"]
    assert gateway.last.json == {"name": "echo", "access": "private"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--endpoint-host", "h"], "needs both --endpoint-host and --endpoint-port"),
        (["--endpoint-port", "80"], "needs both"),
        (["--endpoint-path", "/run"], "--endpoint-path needs"),
        (["--endpoint-host", "h", "--endpoint-port", "0"], "1-65535"),
        (["--endpoint-host", "h", "--endpoint-port", "1", "--endpoint-path", "run"], "absolute"),
        (["--price-per-request", "-2"], "cannot be negative"),
        (["--endpoint-port", "eighty"], "invalid int value"),
    ],
)
def test_agent_publish_usage_errors_send_nothing(
    alice: Path, gateway: FakeGateway, form: Any, argv: list[str], message: str
) -> None:
    ran = form("agent", "publish", "--name", "echo", *argv)
    assert ran.status == 2
    assert message in ran.err
    assert gateway.seen == []


def test_agent_list_and_show_need_no_key(gateway: FakeGateway, form: Any) -> None:
    gateway.on("GET", "/v1/agents", answer(200, {"count": 1, "agents": [AGENT_OBJ]}))
    gateway.on("GET", f"/v1/agents/{AGENT}", answer(200, AGENT_OBJ))
    ran = form("agent", "list")
    assert ran.status == 0, ran.err
    assert ran.out == table(
        "AGENT ID                                                          NAME  OWNER                                       ACCESS  PRICE/REQUEST",
        f"{AGENT}  echo  {ALICE.address}  public  3",
    )
    assert gateway.last.signer is None
    shown = form("agent", "show", AGENT).out
    assert 'endpoint     {"host":"127.0.0.1","port":8080,"path":"/run"}\n' in shown
    assert "allow_list   -\n" in shown


@pytest.mark.parametrize("noun", ["agent", "model"])
def test_list_and_show_signed_reveal_private_listings(
    alice: Path, gateway: FakeGateway, form: Any, noun: str
) -> None:
    gateway.on("GET", f"/v1/{noun}s", answer(200, {"count": 0, f"{noun}s": []}))
    gateway.on("GET", f"/v1/{noun}s/{AGENT}", answer(200, AGENT_OBJ))
    assert form(noun, "list", "--signed").status == 0
    assert gateway.last.signer == ALICE.address
    assert form(noun, "show", AGENT, "--signed", "--json").status == 0
    assert gateway.last.signer == ALICE.address


def test_agent_list_empty_prints_the_header_only(gateway: FakeGateway, form: Any) -> None:
    gateway.on("GET", "/v1/agents", answer(200, {"count": 0, "agents": []}))
    assert form("agent", "list").out == "AGENT ID  NAME  OWNER  ACCESS  PRICE/REQUEST\n"


def test_agent_delete_allow_disallow(alice: Path, gateway: FakeGateway, form: Any) -> None:
    gateway.on("POST", "/v1/agents/delete", answer(200, {"op_id": OP}))
    gateway.on("POST", f"/v1/agents/{AGENT}/allow", answer(200, {"op_id": OP}))
    gateway.on("POST", f"/v1/agents/{AGENT}/disallow", answer(200, {"op_id": OP}))
    assert form("agent", "delete", "--name", "echo").out == f"deleted agent 'echo' (op {OP})\n"
    assert gateway.last.json == {"name": "echo"}
    ran = form("agent", "allow", AGENT, "--address", BOB.address)
    assert ran.out == f"allowed {BOB.address} on agent {AGENT} (op {OP})\n"
    assert gateway.last.json == {"address": BOB.address}
    form("agent", "disallow", AGENT, "--address", BOB.address)
    assert gateway.last.target == f"/v1/agents/{AGENT}/disallow"


def streamed(*chunks: bytes) -> Any:
    return lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=iter(chunks)
    )


def test_agent_hire_streams_the_answer_byte_for_byte(
    alice: Path, gateway: FakeGateway, form: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.on(
        "POST", f"/v1/agents/{AGENT}/hire", streamed(b"data: h\xc3", b"\xa9\n", b"data: done")
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"prompt": "héllo"}'))
    ran = form("agent", "hire", AGENT, "--input", "-")
    assert ran.status == 0, ran.err
    assert ran.out == "data: hé\ndata: done"
    assert gateway.last.body == b'{"prompt":"h\\u00e9llo"}'
    assert gateway.last.signer == ALICE.address
    form("agent", "hire", AGENT)
    assert gateway.last.body == b"{}"


def test_agent_run_sends_the_task(alice: Path, gateway: FakeGateway, form: Any) -> None:
    gateway.on("POST", f"/v1/agents/{AGENT}/run_task", streamed(b'{"answer":', b"42}"))
    ran = form("agent", "run", AGENT, "--task", '{"q": [1, 2]}', "--json")
    assert ran.out == '{"answer":42}'
    assert gateway.last.body == b'{"q":[1,2]}'


def test_agent_run_refused_and_bad_json(alice: Path, gateway: FakeGateway, form: Any) -> None:
    gateway.on("POST", f"/v1/agents/{AGENT}/run_task", refuse(403, "forbidden", "agent echo is private"))  # fmt: skip
    ran = form("agent", "run", AGENT, "--task", "{}")
    assert (ran.status, ran.out, ran.err) == (1, "", "error: agent echo is private (forbidden)\n")
    ran = form("agent", "run", AGENT, "--task", "{nope")
    assert ran.status == 2
    assert ran.err.startswith("error: --task is not JSON (")


# ---------------------------------------------------------------------------- models


def test_model_publish_sends_the_listing(alice: Path, gateway: FakeGateway, form: Any) -> None:
    gateway.on("POST", "/v1/models/create", answer(201, {"op_id": OP, "model_id": MODEL, "model": MODEL_OBJ}))  # fmt: skip
    ran = form(
        "model", "publish", "--name", "llama", "--description", "a small llm",
        "--model-type", "llm", "--parameters", "7000000000", "--context-length", "8192",
        "--price-per-1m-tokens", "20",
    )  # fmt: skip
    assert ran.status == 0, ran.err
    assert (gateway.last.method, gateway.last.target) == ("POST", "/v1/models/create")
    assert gateway.last.body == (
        b'{"name":"llama","access":"public","description":"a small llm","model_type":"llm",'
        b'"parameters":7000000000,"context_length":8192,"pricing":{"price_per_1m_tokens":20}}'
    )
    assert gateway.last.signer == ALICE.address
    assert gateway.last.headers["x-signer"] == ALICE.address
    assert ran.out == f"published model 'llama' as {MODEL} (op {OP})\n"


def test_model_publish_again_updates_the_listing(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    reply = {"op_id": OP, "model_id": MODEL, "model": {**MODEL_OBJ, "access": "private"}}
    gateway.on("POST", "/v1/models/create", refuse(409, "exists", "model llama exists"))
    gateway.on("POST", "/v1/models/update", answer(200, reply))
    ran = form("model", "publish", "--name", "llama", "--private")
    assert (ran.status, ran.out) == (0, f"updated model 'llama' as {MODEL} (op {OP})\n")
    assert [s.target for s in gateway.seen] == ["/v1/models/create", "/v1/models/update"]
    assert gateway.last.json == {"name": "llama", "access": "private"}
    assert all(s.signer == ALICE.address for s in gateway.seen)

    ran = form("model", "publish", "--name", "llama", "--private", "--json")
    assert json.loads(ran.out) == reply


def test_model_publish_other_refusals_are_not_retried_as_updates(
    alice: Path, gateway: FakeGateway, form: Any
) -> None:
    gateway.on(
        "POST",
        "/v1/models/create",
        refuse(400, "invalid_payload", "context_length must be in 0..4294967296", "context_length"),
    )
    ran = form("model", "publish", "--name", "llama", "--context-length", str(2**40))
    assert (ran.status, ran.out) == (1, "")
    assert ran.err == "error: context_length must be in 0..4294967296 (invalid_payload)\n"
    assert [s.target for s in gateway.seen] == ["/v1/models/create"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parameters", "-1"], "--parameters cannot be negative"),
        (["--context-length", "-5"], "--context-length cannot be negative"),
        (["--price-per-1m-tokens", "-2"], "--price-per-1m-tokens cannot be negative"),
        (["--parameters", "7B"], "invalid int value"),
    ],
)
def test_model_publish_usage_errors_send_nothing(
    alice: Path, gateway: FakeGateway, form: Any, argv: list[str], message: str
) -> None:
    ran = form("model", "publish", "--name", "llama", *argv)
    assert ran.status == 2
    assert message in ran.err
    assert gateway.seen == []


def test_model_publish_needs_a_name(alice: Path, gateway: FakeGateway, form: Any) -> None:
    ran = form("model", "publish", "--model-type", "llm")
    assert ran.status == 2
    assert "--name" in ran.err
    assert gateway.seen == []


def test_model_list_and_show_need_no_key(gateway: FakeGateway, form: Any) -> None:
    gateway.on("GET", "/v1/models", answer(200, {"count": 1, "models": [MODEL_OBJ]}))
    gateway.on("GET", f"/v1/models/{MODEL}", answer(200, MODEL_OBJ))
    ran = form("model", "list")
    assert ran.status == 0, ran.err
    assert ran.out == table(
        "MODEL ID                                                          NAME   OWNER                                       TYPE  PARAMETERS  CONTEXT  ACCESS  PRICE/1M TOKENS",
        f"{MODEL}  llama  {ALICE.address}  llm   7000000000  8192     public  20",
    )
    assert (gateway.last.method, gateway.last.target, gateway.last.body) == (
        "GET",
        "/v1/models",
        b"",
    )
    assert gateway.last.signer is None
    assert "x-signer" not in gateway.last.headers
    ran = form("model", "show", MODEL)
    assert ran.out == table(
        f"model_id        {MODEL}",
        f"owner_id        {ALICE.address}",
        "name            llama",
        "description     a small llm",
        "model_type      llm",
        "parameters      7000000000",
        "context_length  8192",
        'pricing         {"price_per_1m_tokens":20}',
        "access          public",
        "allow_list      -",
        f"created_at      {WHEN}",
        f"updated_at      {WHEN}",
    )
    assert (gateway.last.target, gateway.last.signer) == (f"/v1/models/{MODEL}", None)
    assert json.loads(form("model", "list", "--json").out) == {"count": 1, "models": [MODEL_OBJ]}
    assert json.loads(form("--json", "model", "show", MODEL).out) == MODEL_OBJ


def test_model_list_empty_and_show_unknown(gateway: FakeGateway, form: Any) -> None:
    gateway.on("GET", "/v1/models", answer(200, {"count": 0, "models": []}))
    assert form("model", "list").out == (
        "MODEL ID  NAME  OWNER  TYPE  PARAMETERS  CONTEXT  ACCESS  PRICE/1M TOKENS\n"
    )
    gateway.on("GET", "/v1/models/nope", refuse(404, "not_found", "no model nope visible to you"))
    ran = form("model", "show", "nope")
    assert (ran.status, ran.out) == (1, "")
    assert ran.err == "error: no model nope visible to you (not_found)\n"


def test_model_delete_allow_disallow(alice: Path, gateway: FakeGateway, form: Any) -> None:
    gateway.on("POST", "/v1/models/delete", answer(200, {"op_id": OP}))
    gateway.on("POST", f"/v1/models/{MODEL}/allow", answer(200, {"op_id": OP}))
    gateway.on("POST", f"/v1/models/{MODEL}/disallow", answer(200, {"op_id": OP}))
    ran = form("model", "delete", "--name", "llama")
    assert (ran.status, ran.out) == (0, f"deleted model 'llama' (op {OP})\n")
    assert (gateway.last.target, gateway.last.body) == ("/v1/models/delete", b'{"name":"llama"}')
    assert gateway.last.signer == ALICE.address
    ran = form("model", "allow", MODEL, "--address", BOB.address.upper().replace("0X", "0x"))
    assert ran.out == f"allowed {BOB.address} on model {MODEL} (op {OP})\n"
    assert gateway.last.target == f"/v1/models/{MODEL}/allow"
    assert gateway.last.body == b'{"address":"' + BOB.address.encode() + b'"}'
    ran = form("model", "disallow", MODEL, "--address", BOB.address)
    assert ran.out == f"disallowed {BOB.address} on model {MODEL} (op {OP})\n"
    assert (gateway.last.target, gateway.last.json) == (
        f"/v1/models/{MODEL}/disallow",
        {"address": BOB.address},
    )
    assert json.loads(form("model", "disallow", MODEL, "--address", BOB.address, "--json").out) == {
        "op_id": OP
    }
    assert json.loads(form("model", "delete", "--name", "llama", "--json").out) == {"op_id": OP}


def test_model_allow_needs_an_address(alice: Path, gateway: FakeGateway, form: Any) -> None:
    ran = form("model", "allow", MODEL, "--address", "bob")
    assert ran.status == 2
    assert ran.err.startswith("error: --address: an address is 20 bytes")
    assert gateway.seen == []


# ----------------------------------------------------------------------------- nodes


def test_node_list_shows_age_and_free_capacity(gateway: FakeGateway, form: Any) -> None:
    carol = "0x" + "77" * 20
    nodes = {
        "count": 3,
        "nodes": [
            {
                "node_id": ALICE.address,
                "version": "0.1.0",
                "capacity": CAPACITY,
                "last_heartbeat": NOW_S * 1000 - 12_000,  # the clock reads NOW_S + 0.5
            },
            {
                "node_id": BOB.address,
                "version": "0.2.0",
                "capacity": {
                    **CAPACITY,
                    "cpu_available_millicores": 250,
                    "memory_available_bytes": 1536 * 2**20,
                    "storage_available_bytes": 2 * 2**40,
                    "vm_free": {"vcpus": 2, "memory_mb": 1536, "disk_gb": 15, "gpus": 0},
                },
                "last_heartbeat": (NOW_S - 3 * 3600 - 5) * 1000,
            },
            # Announced, no heartbeat yet.
            {"node_id": carol, "version": None},
        ],
    }
    gateway.on("GET", "/v1/node/list", answer(200, nodes))
    ran = form("node", "list")
    assert ran.status == 0, ran.err
    assert ran.out == table(
        "NODE ID                                     VERSION  LAST HEARTBEAT  FREE CPU  FREE MEMORY  FREE STORAGE  FREE FOR VMS",
        f"{ALICE.address}  0.1.0    12s ago         6000m     8.0 GiB      768.0 GiB     -",
        f"{BOB.address}  0.2.0    3h ago          250m      1.5 GiB      2.0 TiB       2 vCPU 1.5 GiB 15 GB",
        f"{carol}  -        -               -         -            -             -",
    )
    assert (gateway.last.method, gateway.last.target, gateway.last.body) == (
        "GET",
        "/v1/node/list",
        b"",
    )
    assert gateway.last.signer is None
    assert json.loads(form("node", "list", "--json").out) == nodes


def test_node_list_empty_prints_the_header_only(gateway: FakeGateway, form: Any) -> None:
    gateway.on("GET", "/v1/node/list", answer(200, {"count": 0, "nodes": []}))
    assert form("node", "list").out == (
        "NODE ID  VERSION  LAST HEARTBEAT  FREE CPU  FREE MEMORY  FREE STORAGE  FREE FOR VMS\n"
    )


@pytest.mark.parametrize(
    ("heartbeat_ms", "shown"),
    [
        (NOW_S * 1000, "0s ago"),
        (NOW_S * 1000 - 59_000, "59s ago"),
        (NOW_S * 1000 - 60_000, "1m ago"),
        ((NOW_S - 3599) * 1000, "59m ago"),
        ((NOW_S - 2 * 86400 - 7200) * 1000, "2d ago"),
        (NOW_S * 1000 + 30_000, "29s ahead"),  # its clock runs ahead of ours
    ],
)
def test_heartbeat_ages(heartbeat_ms: int, shown: str) -> None:
    assert cli._age(NOW_S + 0.5, heartbeat_ms) == shown


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (3 * 2**50, "3072.0 TiB"),
        (None, "-"),
    ],
)
def test_byte_counts(size: Any, shown: str) -> None:
    assert cli._bytes_text(size) == shown


def test_node_info_human_and_json(gateway: FakeGateway, form: Any) -> None:
    info = {
        "address": BOB.address,
        "peer_id": "16Uiu2HAm",
        "network": "local",
        "version": "0.1.0",
        "listen_addrs": ["/ip4/127.0.0.1/tcp/4001"],
        "ops": 12,
        "state_digest": "ff00",
    }
    gateway.on("GET", "/v1/node/info", answer(200, info))
    ran = form("node", "info")
    assert ran.status == 0, ran.err
    assert ran.out == table(
        f"address       {BOB.address}",
        "peer_id       16Uiu2HAm",
        "network       local",
        "version       0.1.0",
        "listen_addrs  /ip4/127.0.0.1/tcp/4001",
        "ops           12",
        "state_digest  ff00",
    )
    assert (gateway.last.method, gateway.last.target, gateway.last.signer) == (
        "GET",
        "/v1/node/info",
        None,
    )
    assert json.loads(form("node", "info", "--json").out) == info


def test_node_commands_report_an_unreachable_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # free a moment ago, closed now
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert cli.main(["node", "list", "--gateway", url]) == 1
    assert capsys.readouterr().err.startswith(f"error: no gateway answers at {url}; ")


# ------------------------------------------------------------------- status, globals


def test_status_human_and_json(gateway: FakeGateway, form: Any) -> None:
    info = {
        "address": BOB.address,
        "peer_id": "16Uiu2HAm",
        "network": "local",
        "ops": 12,
        "state_digest": "ff00",
        "listen_addrs": ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4002"],
    }
    gateway.on("GET", "/v1/health", answer(200, {"status": "healthy", "version": "0.1.0"}))
    gateway.on("GET", "/v1/node/info", answer(200, info))
    ran = form("status")
    assert ran.out == table(
        f"gateway       {GATEWAY}",
        "status        healthy",
        "version       0.1.0",
        f"address       {BOB.address}",
        "peer_id       16Uiu2HAm",
        "network       local",
        "ops           12",
        "state_digest  ff00",
        "listen_addrs  /ip4/127.0.0.1/tcp/4001, /ip4/127.0.0.1/tcp/4002",
    )
    assert json.loads(form("status", "--json").out) == {
        "gateway": GATEWAY,
        "health": {"status": "healthy", "version": "0.1.0"},
        "node": info,
    }
    assert all(s.signer is None for s in gateway.seen)


def test_the_gateway_comes_from_the_option_else_the_environment(
    gateway: FakeGateway, form: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.on("GET", "/v1/health", answer(200, {"status": "healthy"}))
    gateway.on("GET", "/v1/node/info", answer(200, {}))
    monkeypatch.setenv("FORM_GATEWAY", "http://10.1.2.3:9999")
    assert form("status").out.startswith("gateway  http://10.1.2.3:9999\n")
    assert gateway.last.headers["host"] == "10.1.2.3:9999"
    assert form("status", "--gateway", "http://h:1/v1").out.startswith("gateway  http://h:1\n")


def test_a_gateway_that_is_not_a_url_is_a_usage_error(form: Any) -> None:
    ran = form("--gateway", "localhost:3004", "status")
    assert ran.status == 2
    assert ran.err.startswith("error: the gateway URL must look like http://HOST:PORT")


def test_nobody_listening_says_how_to_fix_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # free a moment ago, closed now
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert cli.main(["--gateway", url, "agent", "list"]) == 1
    assert capsys.readouterr().err == (
        f"error: no gateway answers at {url}; is `formation-node run` running? "
        "pass --gateway URL (or set FORM_GATEWAY)\n"
    )


def test_a_signed_command_without_a_keystore_says_how_to_make_one(
    tmp_path: Path, gateway: FakeGateway, form: Any
) -> None:
    ran = form("account", "show")
    assert ran.status == 2
    assert ran.err == (
        f"error: no keystore at {default_keystore(tmp_path)}; create one with `form init`, "
        "or pass --keystore PATH (or set FORM_KEYSTORE)\n"
    )
    assert gateway.seen == []


def test_a_wrong_password_is_a_usage_error(
    alice: Path, gateway: FakeGateway, form: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORM_PASSWORD", "not it")
    ran = form("key", "list")
    assert ran.status == 2
    assert "wrong password" in ran.err
    assert gateway.seen == []


def test_no_password_and_no_terminal_says_to_pass_a_file(
    alice: Path, form: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FORM_PASSWORD")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    ran = form("key", "list")
    assert ran.status == 2
    assert "--password-file" in ran.err


@pytest.mark.parametrize(
    "argv",
    [[], ["agent"], ["manage", "create", "--name", "x"], ["frobnicate"], ["--act-as"]],
)
def test_argument_errors_exit_2(form: Any, argv: list[str]) -> None:
    ran = form(*argv)
    assert ran.status == 2
    assert "usage: form" in ran.err


def test_the_timeout_must_be_positive(gateway: FakeGateway, form: Any) -> None:
    ran = form("status", "--timeout-s", "0")
    assert (ran.status, gateway.seen) == (2, [])
    assert ran.err == "error: --timeout-s must be more than 0, got 0.0\n"


def test_act_as_must_be_an_address(alice: Path, gateway: FakeGateway, form: Any) -> None:
    ran = form("--act-as", "alice", "key", "list")
    assert ran.status == 2
    assert ran.err.startswith("error: --act-as: an address is 20 bytes")
    assert gateway.seen == []


def test_help_and_version_exit_0(form: Any) -> None:
    assert form("--help").status == 0
    ran = form("--version")
    assert (ran.status, ran.out) == (0, "form 0.1.0\n")


def test_a_reader_that_goes_away_is_not_a_traceback(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    gateway.on("GET", "/v1/agents", answer(200, {"count": 1, "agents": [AGENT_OBJ]}))
    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli.main(["agent", "list"], transport=gateway.transport) == 141
