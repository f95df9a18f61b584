"""The gateway over real HTTP (the gateway server on loopback) in front of a real replica and store.

Requests are signed by the libraries a client would use (eth-account here; ethers in the
interop test below), never by the code under test.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from eth_account import Account
from eth_account.messages import encode_defunct

from node.gateway.app import GatewayApp, serve_gateway
from node.gateway.http import REQUEST_BODY_BYTES_MAX
from node.gateway.openapi import openapi
from node.gateway.proxy import AgentProxy
from node.gateway.routes import ENDPOINTS
from node.identity.keys import NodeKey
from node.ledger.op import REQUEST_ENVELOPE_VERSION, Op, decode_op, sign_op
from node.ledger.request_op import canonical_message
from node.ledger.state import build_id_of, instance_id_of
from node.replica import CommitFailed, Replica, SubmitResult
from tests.helpers import JS_DIR, NET, js_runtime, seeded_keys

ALICE, BOB, DELEGATE = seeded_keys(3, seed=23)
JS_SIGNER = JS_DIR / "sign.mjs"


class _Node:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def info(self) -> dict[str, Any]:
        return {"address": "0x" + "00" * 20, "network": NET, "ops": self.replica.state.op_count}

    async def submit_checked(self, ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult:
        now_ms = int(time.time() * 1000)
        return await trio.to_thread.run_sync(self.replica.submit_checked, ops, now_ms)


@dataclass
class Gateway:
    url: str
    replica: Replica
    app: GatewayApp
    http: httpx.AsyncClient

    @property
    def ops(self) -> int:
        return self.replica.state.op_count

    async def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: NodeKey | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        act_as: str | None = None,
    ) -> httpx.Response:
        data = raw if raw is not None else b"" if body is None else _compact(body)
        sent = dict(headers or {})
        if key is not None:
            sent.update(sign(key, method, path, data, act_as=act_as))
        return await self.http.request(method, self.url + path, content=data, headers=sent)


def _compact(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def sign(
    key: NodeKey,
    method: str,
    path: str,
    body: bytes,
    *,
    t: int | None = None,
    act_as: str | None = None,
) -> dict[str, str]:
    """Headers as eth-account makes them: personal_sign of the canonical line (the v2 line
    naming ``act_as`` for a delegated key)."""
    now_s = int(time.time()) if t is None else t
    line = canonical_message(method, path, body, now_s, secrets.token_urlsafe(12), act_as)
    signed = Account.sign_message(encode_defunct(text=line), private_key=key.secret)
    return {"X-Message": line, "X-Signature": "0x" + bytes(signed.signature).hex()}


@pytest.fixture
async def gateway(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Gateway]:
    replica = Replica.open(tmp_path / "node", NET)
    app = GatewayApp(_Node(replica), proxy=AgentProxy(["127.0.0.0/8"], timeout_s=10))
    url = await nursery.start(serve_gateway, app, "127.0.0.1", 0)
    async with httpx.AsyncClient(timeout=10) as http:
        yield Gateway(url, replica, app, http)
    replica.close()


async def test_an_eth_account_signed_write_is_a_request_op_any_replica_verifies(
    gateway: Gateway,
) -> None:
    reply = await gateway.send("POST", "/v1/account/create", {"name": "alice"}, key=ALICE)
    assert reply.status_code == 201, reply.text
    assert reply.json()["account"]["address"] == ALICE.address
    op_id = bytes.fromhex(reply.json()["op_id"][2:])
    [(body, sig)] = gateway.replica.get_wire([op_id])
    assert json.loads(body)["v"] == REQUEST_ENVELOPE_VERSION
    # The stored op carries the user's own signature: a replica elsewhere re-verifies it.
    op = decode_op(body, sig, NET)
    assert (op.author, op.kind) == (ALICE.address, "account.create")
    # Readable unprefixed too (the upstream's clients use both).
    got = await gateway.send("GET", f"/account/{ALICE.address}/get", key=ALICE)
    assert got.json()["name"] == "alice"


@pytest.mark.real
async def test_an_ethers_signed_request_is_accepted(gateway: Gateway) -> None:
    node = js_runtime("ethers")
    body = _compact({"name": "from-ethers"})
    line = canonical_message("POST", "/v1/account/create", body, int(time.time()), "ethers-nonce-1")
    command = {"op": "sign", "privateKey": "0x" + BOB.secret.hex(), "message": line}
    done = await trio.run_process(
        [node, str(JS_SIGNER), json.dumps(command)], capture_stdout=True, check=True
    )
    signature = json.loads(done.stdout)["signature"]
    reply = await gateway.send(
        "POST",
        "/v1/account/create",
        raw=body,
        headers={"X-Message": line, "X-Signature": signature},
    )
    assert reply.status_code == 201, reply.text
    assert gateway.replica.state.account(BOB.address)["name"] == "from-ethers"  # type: ignore[index]


async def test_the_upstream_authorization_carrier_is_accepted(gateway: Gateway) -> None:
    body = _compact({"name": "upstream"})
    line = canonical_message("POST", "/account/create", body, int(time.time()), "upstream-n1")
    digest = hashlib.sha256(hashlib.sha256(line.encode()).digest()).digest()
    signature = ALICE.sign_digest(digest)
    header = f"Signature {signature[:64].hex()}.{signature[64] - 27}.{line.encode().hex()}"
    reply = await gateway.send(
        "POST", "/account/create", raw=body, headers={"Authorization": header}
    )
    assert reply.status_code == 201, reply.text
    assert gateway.replica.state.account(ALICE.address)["name"] == "upstream"  # type: ignore[index]


async def _alice_with_instance(gateway: Gateway) -> str:
    reply = await gateway.send(
        "POST", "/v1/instance/create", {"name": "web", "formfile": "NAME web\n"}, key=ALICE
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["instance_id"] == instance_id_of(ALICE.address, "web")
    assert reply.json()["build_id"] == build_id_of(ALICE.address, "web")
    assert reply.json()["status"] is None  # nothing runs until a host node reports
    return str(reply.json()["instance_id"])


async def test_refused_requests_get_401_or_403_json_and_change_nothing(gateway: Gateway) -> None:
    instance_id = await _alice_with_instance(gateway)
    before = gateway.ops
    path = f"/v1/instance/{instance_id}/stop"
    signed = sign(ALICE, "POST", path, b"{}")
    cases: list[tuple[str, httpx.Response, int, str]] = []

    async def attempt(
        label: str, status: int, code: str, method: str, target: str, raw: bytes, headers: Any
    ) -> None:
        reply = await gateway.http.request(
            method, gateway.url + target, content=raw, headers=headers
        )
        cases.append((label, reply, status, code))

    await attempt("tampered body", 401, "message_mismatch", "POST", path, b'{"x":1}', signed)
    await attempt(
        "other path",
        401,
        "message_mismatch",
        "POST",
        f"/v1/instance/{instance_id}/delete",
        b"{}",
        signed,
    )
    await attempt("no signature", 401, "missing_signature", "POST", path, b"{}", {})
    # r = 0 recovers no key. (A merely altered signature recovers *some* other key: that
    # signer then owns nothing here, the "foreign key" case below.)
    bad = dict(signed, **{"X-Signature": "0x" + "00" * 32 + signed["X-Signature"][66:]})
    await attempt("broken signature", 401, "bad_signature", "POST", path, b"{}", bad)
    stale = sign(ALICE, "POST", path, b"{}", t=int(time.time()) - 3600)
    await attempt("stale", 401, "stale", "POST", path, b"{}", stale)
    # Bob, properly signed, on Alice's instance.
    await attempt(
        "foreign key", 403, "forbidden", "POST", path, b"{}", sign(BOB, "POST", path, b"{}")
    )
    for label, reply, status, code in cases:
        assert (reply.status_code, reply.json()["error"]) == (status, code), label
        assert reply.json()["message"], label
    assert gateway.ops == before
    # The genuine request goes through once; its replay is refused.
    first = await gateway.http.post(gateway.url + path, content=b"{}", headers=signed)
    assert first.status_code == 200, first.text
    replay = await gateway.http.post(gateway.url + path, content=b"{}", headers=signed)
    assert (replay.status_code, replay.json()["error"]) == (401, "replayed")
    assert gateway.ops == before + 1
    assert gateway.replica.state.instance(instance_id)["desired_state"] == "stopped"  # type: ignore[index]


async def test_validation_errors_name_the_field_and_routes_answer_json(gateway: Gateway) -> None:
    reply = await gateway.send(
        "POST", "/v1/instance/create", {"name": "ok", "formfile": "NAME ok\n", "gpu": 1}, key=ALICE
    )
    assert (reply.status_code, reply.json()["error"], reply.json()["field"]) == (
        400,
        "invalid_payload",
        "gpu",
    )
    reply = await gateway.send("POST", "/v1/account/create", {"is_global_admin": True}, key=ALICE)
    assert (reply.status_code, reply.json()["field"]) == (400, "is_global_admin")
    reply = await gateway.send("POST", "/v1/account/create", raw=b"{nope", key=ALICE)
    assert (reply.status_code, reply.json()["error"]) == (400, "invalid_json")
    assert (await gateway.send("GET", "/v1/nowhere")).json()["error"] == "not_found"
    wrong = await gateway.send("DELETE", "/v1/ping")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    huge = await gateway.send("POST", "/v1/account/create", raw=b" " * (REQUEST_BODY_BYTES_MAX + 1))
    assert (huge.status_code, huge.json()["error"]) == (413, "too_large")
    assert gateway.ops == 0
    again = await gateway.send("POST", "/v1/account/create", {}, key=ALICE)
    assert again.status_code == 201
    exists = await gateway.send("POST", "/v1/account/create", {}, key=ALICE)
    assert (exists.status_code, exists.json()["error"]) == (409, "exists")


async def test_reads_show_the_signer_only_its_own(gateway: Gateway) -> None:
    instance_id = await _alice_with_instance(gateway)
    assert (await gateway.send("GET", "/v1/instance/list", key=BOB)).json()["count"] == 0
    mine = await gateway.send("GET", "/v1/instance/list", key=ALICE)
    assert [i["instance_id"] for i in mine.json()["instances"]] == [instance_id]
    theirs = await gateway.send("GET", f"/v1/instance/{instance_id}/get", key=BOB)
    assert theirs.status_code == 403
    unsigned = await gateway.send("GET", "/v1/instance/list")
    assert unsigned.status_code == 401
    await gateway.send("POST", "/v1/account/create", {"name": "a"}, key=ALICE)
    other = await gateway.send("GET", f"/v1/account/{ALICE.address}/get", key=BOB)
    assert (other.status_code, other.json()["error"]) == (401, "wrong_signer")


async def test_a_foreign_key_is_a_401_when_the_request_names_its_signer(gateway: Gateway) -> None:
    instance_id = await _alice_with_instance(gateway)
    before = gateway.ops
    path = f"/v1/instance/{instance_id}/stop"
    claimed = {"X-Signer": ALICE.address}
    foreign = await gateway.send("POST", path, {}, key=BOB, headers=claimed)
    assert (foreign.status_code, foreign.json()["error"]) == (401, "wrong_signer")
    assert gateway.ops == before
    own = await gateway.send("POST", path, {}, key=ALICE, headers=claimed)
    assert own.status_code == 200, own.text


async def test_private_agents_are_listed_only_to_owner_and_allowed(gateway: Gateway) -> None:
    created = await gateway.send(
        "POST", "/v1/agents/create", {"name": "secret", "access": "private"}, key=ALICE
    )
    assert created.status_code == 201, created.text
    agent_id = created.json()["agent_id"]
    await gateway.send("POST", "/v1/agents/create", {"name": "open"}, key=ALICE)

    async def visible(key: NodeKey | None) -> set[str]:
        reply = await gateway.send("GET", "/v1/agents", key=key)
        return {a["name"] for a in reply.json()["agents"]}

    assert await visible(None) == {"open"}
    assert await visible(BOB) == {"open"}
    assert await visible(ALICE) == {"open", "secret"}
    allowed = await gateway.send(
        "POST", f"/v1/agents/{agent_id}/allow", {"address": BOB.address}, key=ALICE
    )
    assert allowed.status_code == 200, allowed.text
    assert await visible(BOB) == {"open", "secret"}
    removed = await gateway.send(
        "POST", f"/v1/agents/{agent_id}/disallow", {"address": BOB.address}, key=ALICE
    )
    assert removed.status_code == 200, removed.text
    assert await visible(BOB) == {"open"}
    assert (await gateway.send("GET", f"/v1/agents/{agent_id}", key=BOB)).status_code == 404


async def test_a_delegated_key_acts_within_its_grant_until_revoked(gateway: Gateway) -> None:
    acting: dict[str, Any] = {"headers": {"X-Act-As": ALICE.address}, "act_as": ALICE.address}
    job = {"name": "job", "formfile": "NAME job\n"}
    refused = await gateway.send("POST", "/v1/instance/create", job, key=DELEGATE, **acting)
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    grant = {
        "delegate": DELEGATE.address,
        "scopes": ["instance", "read"],
        "expires_s": int(time.time()) + 3600,
        "label": "ci",
    }
    granted = await gateway.send("POST", "/v1/key/grant", grant, key=ALICE)
    assert granted.status_code == 200, granted.text
    # The account must be inside the signature: X-Act-As alone (a v1 line), or altered on the
    # way, is refused and writes nothing.
    ops_before = gateway.ops
    header_only = await gateway.send(
        "POST", "/v1/instance/create", job, key=DELEGATE, headers=acting["headers"]
    )
    assert (header_only.status_code, header_only.json()["error"]) == (401, "act_as_unsigned")
    altered = await gateway.send(
        "POST",
        "/v1/instance/create",
        job,
        key=DELEGATE,
        headers={"X-Act-As": BOB.address},
        act_as=ALICE.address,
    )
    assert (altered.status_code, altered.json()["error"]) == (401, "act_as_mismatch")
    assert gateway.ops == ops_before
    made = await gateway.send("POST", "/v1/instance/create", job, key=DELEGATE, **acting)
    assert made.status_code == 201, made.text
    assert made.json()["instance"]["instance_owner"] == ALICE.address
    listed = await gateway.send("GET", "/v1/instance/list", key=DELEGATE, **acting)
    assert listed.json()["count"] == 1
    # Outside the grant's scopes, and keys granting keys.
    agent = await gateway.send("POST", "/v1/agents/create", {"name": "a"}, key=DELEGATE, **acting)
    assert agent.status_code == 403
    regrant = await gateway.send("POST", "/v1/key/grant", grant, key=DELEGATE, **acting)
    assert regrant.status_code == 403
    keys = await gateway.send("GET", "/v1/key/list", key=ALICE)
    assert [k["label"] for k in keys.json()["keys"]] == ["ci"]
    revoked = await gateway.send(
        "POST", "/v1/key/revoke", {"delegate": DELEGATE.address}, key=ALICE
    )
    assert revoked.json()["grant"]["revoked"] is True
    after = await gateway.send(
        "POST", "/v1/instance/create", {**job, "name": "job2"}, key=DELEGATE, **acting
    )
    assert after.status_code == 403


async def _agent(
    scope: dict[str, Any], receive: Any, send: Any
) -> None:  # a real agent: an ASGI app on its own gateway server
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            message = await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            del message
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = dict(scope["headers"])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    for chunk in (b"echo: ", body, b"\n", headers.get(b"x-formation-call", b"?") + b"\n"):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await trio.sleep(0.01)
    usage = b'FINAL_USAGE_INFO:{"input_tokens":3,"output_tokens":2}\n'
    await send({"type": "http.response.body", "body": usage})


async def test_hire_streams_the_agents_answer_with_usage(
    gateway: Gateway, nursery: trio.Nursery
) -> None:
    agent_url = await nursery.start(serve_gateway, _agent, "127.0.0.1", 0)
    port = int(agent_url.rsplit(":", 1)[1])
    spec = {"name": "echo", "endpoint": {"host": "127.0.0.1", "port": port, "path": "/run"}}
    created = await gateway.send("POST", "/v1/agents/create", spec, key=ALICE)
    agent_id = created.json()["agent_id"]
    raw = await gateway.send("POST", f"/v1/agents/{agent_id}/hire", {"q": "hi"}, key=BOB)
    assert raw.status_code == 200, raw.text
    assert raw.text.startswith('echo: {"q":"hi"}\nhire\n')
    events = await gateway.send(
        "POST",
        f"/v1/agents/{agent_id}/run_task",
        {"task": 1},
        key=BOB,
        headers={"Accept": "text/event-stream"},
    )
    assert events.headers["content-type"] == "text/event-stream"
    assert "event: message\ndata: echo: " in events.text
    usage = json.loads(events.text.split("event: usage\ndata: ", 1)[1].split("\n", 1)[0])
    assert (usage["caller"], usage["call"], usage["input_tokens"], usage["output_tokens"]) == (
        BOB.address,
        "run_task",
        3,
        2,
    )
    assert gateway.app.proxy.calls_total == 2


async def test_agent_endpoints_outside_the_node_networks_are_not_dialed(gateway: Gateway) -> None:
    for host, code in (("192.0.2.1", "endpoint_refused"), ("example.com", "endpoint_refused")):
        spec = {"name": f"far-{code}-{host[:3]}", "endpoint": {"host": host, "port": 80}}
        agent_id = (await gateway.send("POST", "/v1/agents/create", spec, key=ALICE)).json()[
            "agent_id"
        ]
        reply = await gateway.send("POST", f"/v1/agents/{agent_id}/hire", {}, key=BOB)
        assert (reply.status_code, reply.json()["error"]) == (409, code)
    # Inside the networks, nobody listening: a clear 502.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    spec = {"name": "gone", "endpoint": {"host": "127.0.0.1", "port": free_port}}
    agent_id = (await gateway.send("POST", "/v1/agents/create", spec, key=ALICE)).json()["agent_id"]
    reply = await gateway.send("POST", f"/v1/agents/{agent_id}/hire", {}, key=BOB)
    assert (reply.status_code, reply.json()["error"]) == (502, "agent_unreachable")


async def test_openapi_documents_every_route(gateway: Gateway) -> None:
    document = (await gateway.send("GET", "/openapi.json")).json()
    assert document == openapi(ENDPOINTS)
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert operations == {(e.method, "/v1" + e.path) for e in ENDPOINTS}
    names = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(names) == len(set(names))


def test_every_route_module_is_in_the_table() -> None:
    # Adding a group is a module in node/gateway/routes/ and a line in GROUPS: one without the
    # other would be routes nobody serves, or nothing at all.
    from node.gateway import routes

    modules = {p.stem for p in Path(routes.__file__).parent.glob("*.py") if p.stem != "__init__"}
    assert {group.__name__.rpartition(".")[2] for group in routes.GROUPS} == modules


async def test_requests_over_the_in_flight_bound_are_refused_not_queued(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    replica = Replica.open(tmp_path / "busy", NET)
    try:
        url = await nursery.start(
            serve_gateway, GatewayApp(_Node(replica), inflight_max=0), "127.0.0.1", 0
        )
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(url + "/v1/ping")
        assert (reply.status_code, reply.json()["error"]) == (503, "busy")
    finally:
        replica.close()


async def test_delete_then_create_does_not_resurrect_a_private_agents_allow_list(
    gateway: Gateway,
) -> None:
    spec = {"name": "priv", "access": "private", "description": "old"}
    agent_id = (await gateway.send("POST", "/v1/agents/create", spec, key=ALICE)).json()["agent_id"]
    await gateway.send("POST", f"/v1/agents/{agent_id}/allow", {"address": BOB.address}, key=ALICE)
    assert (await gateway.send("GET", f"/v1/agents/{agent_id}", key=BOB)).status_code == 200
    deleted = await gateway.send("POST", "/v1/agents/delete", {"name": "priv"}, key=ALICE)
    assert deleted.status_code == 200, deleted.text
    # Writes to what does not exist are refused here rather than stored for later.
    for path, body in (
        ("/v1/agents/update", {"name": "priv", "description": "while deleted"}),
        ("/v1/agents/delete", {"name": "priv"}),
        ("/v1/agents/delete", {"name": "never-existed"}),
        ("/v1/key/revoke", {"delegate": DELEGATE.address}),
        ("/v1/account/update", {"name": "no account yet"}),
    ):
        reply = await gateway.send("POST", path, body, key=ALICE)
        assert (reply.status_code, reply.json()["error"]) == (404, "not_found"), path
    again = await gateway.send(
        "POST", "/v1/agents/create", {"name": "priv", "access": "private"}, key=ALICE
    )
    assert again.status_code == 201, again.text
    assert again.json()["agent"]["allow_list"] == []
    assert "description" not in again.json()["agent"]
    assert (await gateway.send("GET", f"/v1/agents/{agent_id}", key=BOB)).status_code == 404


async def test_an_agent_without_an_endpoint_is_reached_at_its_started_instance(
    gateway: Gateway, nursery: trio.Nursery
) -> None:
    agent_url = await nursery.start(serve_gateway, _agent, "127.0.0.1", 0)
    port = agent_url.rsplit(":", 1)[1]
    spec = {"name": "svc", "metadata": {"task_endpoint_port": port, "task_endpoint_path": "/t"}}
    agent_id = (await gateway.send("POST", "/v1/agents/create", spec, key=ALICE)).json()["agent_id"]
    not_yet = await gateway.send("POST", f"/v1/agents/{agent_id}/hire", {}, key=BOB)
    assert (not_yet.status_code, not_yet.json()["error"]) == (409, "no_endpoint")
    made = await gateway.send(
        "POST", "/v1/instance/create", {"name": "svc", "formfile": "NAME svc\n"}, key=ALICE
    )
    instance_id = made.json()["instance_id"]
    assert made.json()["build_id"] == agent_id
    # A host node claims the instance and reports it started at a (here: loopback) address.
    host = NodeKey(random.Random(5).randbytes(32))
    now_ms = int(time.time() * 1000)
    wire = [
        (op.body, op.sig)
        for op in (
            sign_op(host, NET, (now_ms, 0), "instance.claim", {"instance_id": instance_id}),
            sign_op(
                host,
                NET,
                (now_ms, 1),
                "instance.status",
                {"instance_id": instance_id, "status": "Started", "formnet_ip": "127.0.0.1"},
            ),
        )
    ]
    assert len(gateway.replica.submit(wire, now_ms).accepted) == 2
    reply = await gateway.send("POST", f"/v1/agents/{agent_id}/run_task", {"q": 1}, key=BOB)
    assert reply.status_code == 200, reply.text
    assert reply.text.startswith('echo: {"q":1}\nrun_task\n')


def test_every_write_route_has_exactly_one_replicated_meaning() -> None:
    # Two tables name the write routes: ENDPOINTS (HTTP, OpenAPI) and request_op.ROUTES (what
    # every replica derives from a signed request). They must list the same routes.
    from node.ledger.request_op import ROUTES, route_of

    # POST /blobs/missing is a read with a body (a list of digests); blobs are not state, and
    # POST /builds/{id}/pull copies blobs onto this node: no replicated meaning either.
    writes = [
        e
        for e in ENDPOINTS
        if e.method == "POST"
        and not e.path.endswith(("/hire", "/run_task", "/pull"))
        and not e.path.startswith("/blobs/")
    ]
    for endpoint in writes:
        assert route_of("POST", "/v1" + endpoint.path.replace("{id}", "ab" * 20)), endpoint
    assert len(writes) == len(ROUTES)


async def test_a_write_the_store_cannot_make_durable_is_a_503_and_changes_nothing(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult:
        raise CommitFailed(OSError(28, "No space left on device"))

    monkeypatch.setattr(gateway.app.node, "submit_checked", broken)
    before = gateway.ops
    reply = await gateway.send("POST", "/v1/account/create", {"name": "alice"}, key=ALICE)
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"] == "not_stored"
    assert "No space left on device" in reply.json()["message"]
    assert gateway.ops == before
    assert gateway.replica.state.account(ALICE.address) is None


async def test_a_signed_write_recovers_its_signer_once(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.ledger.request_op as request_op

    recoveries: list[bytes] = []
    real = request_op.recover_address

    def counted(digest: bytes, sig: bytes) -> str:
        recoveries.append(digest)
        return real(digest, sig)

    monkeypatch.setattr(request_op, "recover_address", counted)
    path, body = "/v1/account/create", _compact({"name": "alice"})
    signed = sign(ALICE, "POST", path, body)
    reply = await gateway.http.post(gateway.url + path, content=body, headers=signed)
    assert reply.status_code == 201, reply.text
    # Authenticated, then verified as a request op as every replica does: one recovery.
    assert len(recoveries) == 1
    # Its replay is still refused: the memo is no way around the nonce cache.
    replay = await gateway.http.post(gateway.url + path, content=body, headers=signed)
    assert (replay.status_code, replay.json()["error"]) == (401, "replayed")
    assert gateway.ops == 1


async def test_a_request_is_routed_once_and_gets_its_own_path_parameters(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await gateway.send("POST", "/v1/account/create", {"name": "alice"}, key=ALICE)
    assert created.status_code == 201, created.text
    await gateway.send("POST", "/v1/account/create", {"name": "bob"}, key=BOB)
    router = gateway.app._router
    real = router.match
    calls: list[str] = []

    def counted(request: Any) -> Any:
        calls.append(request.path)
        return real(request)

    monkeypatch.setattr(router, "match", counted)
    # Two reads of different accounts, in turn: each is routed once (for its body limit, and
    # the handler reuses it) and each handler sees its own {address}.
    for key in (ALICE, BOB):
        got = await gateway.send("GET", f"/v1/account/{key.address}/get", key=key)
        assert got.status_code == 200, got.text
        assert got.json()["address"] == key.address
    assert len(calls) == 2
    # An unknown route is still a 404, and a route matched for nothing is not kept forever.
    missing = await gateway.send("GET", "/v1/no/such/route")
    assert missing.status_code == 404
    assert gateway.app._matched == {}
