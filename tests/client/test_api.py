"""GatewayClient: the exact request each method sends, signing, and how refusals surface."""

import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from node.client.api import ApiError, ClientError, GatewayClient, GatewayUnreachable
from tests.client.fake_gateway import NOW_S, FakeGateway, answer, refuse
from tests.helpers import seeded_keys

ALICE, BOB = seeded_keys(2, seed=62)
AGENT = "ab" * 32
INSTANCE = "cd" * 20
NODE = "0x" + "ef" * 20

Call = Callable[[GatewayClient], Any]

# (call, method, target, body sent or None, signed)
ROUTES: list[tuple[str, Call, str, str, Any, bool]] = [
    ("ping", lambda c: c.ping(), "GET", "/v1/ping", None, False),
    ("health", lambda c: c.health(), "GET", "/v1/health", None, False),
    ("openapi", lambda c: c.openapi(), "GET", "/v1/openapi.json", None, False),
    ("node_info", lambda c: c.node_info(), "GET", "/v1/node/info", None, False),
    ("node_list", lambda c: c.node_list(), "GET", "/v1/node/list", None, False),
    (
        "account_create",
        lambda c: c.account_create("alice", "hi"),
        "POST",
        "/v1/account/create",
        {"name": "alice", "description": "hi"},
        True,
    ),
    ("account_create_bare", lambda c: c.account_create(), "POST", "/v1/account/create", {}, True),
    (
        "account_update",
        lambda c: c.account_update(description="new"),
        "POST",
        "/v1/account/update",
        {"description": "new"},
        True,
    ),
    ("account_delete", lambda c: c.account_delete(), "POST", "/v1/account/delete", {}, True),
    (
        "account_get",
        lambda c: c.account_get(ALICE.address),
        "GET",
        f"/v1/account/{ALICE.address}/get",
        None,
        True,
    ),
    ("account_list", lambda c: c.account_list(), "GET", "/v1/account/list", None, True),
    (
        "instance_create",
        lambda c: c.instance_create(
            "web", "NAME web\n", description="d", resources={"vcpus": 2, "memory_mb": 1024}
        ),
        "POST",
        "/v1/instance/create",
        {
            "name": "web",
            "formfile": "NAME web\n",
            "description": "d",
            "resources": {"vcpus": 2, "memory_mb": 1024},
        },
        True,
    ),
    ("instance_list", lambda c: c.instance_list(), "GET", "/v1/instance/list", None, True),
    (
        "instance_get",
        lambda c: c.instance_get(INSTANCE),
        "GET",
        f"/v1/instance/{INSTANCE}/get",
        None,
        True,
    ),
    (
        "instance_get_by_build_id",
        lambda c: c.instance_get_by_build_id(AGENT),
        "GET",
        f"/v1/instance/{AGENT}/get_by_build_id",
        None,
        True,
    ),
    (
        "instance_ips",
        lambda c: c.instance_ips(AGENT),
        "GET",
        f"/v1/instance/{AGENT}/get_instance_ips",
        None,
        True,
    ),
    *[
        (
            f"instance_{action}",
            (lambda a: lambda c: getattr(c, f"instance_{a}")(INSTANCE))(action),
            "POST",
            f"/v1/instance/{INSTANCE}/{action}",
            {},
            True,
        )
        for action in ("stop", "start", "reboot", "delete")
    ],
    (
        "instance_logs",
        lambda c: c.instance_logs(INSTANCE, slot=1, bytes_max=100),
        "GET",
        f"/v1/instance/{INSTANCE}/logs?slot=1&bytes=100",
        None,
        True,
    ),
    (
        "instance_metrics",
        lambda c: c.instance_metrics(INSTANCE),
        "GET",
        f"/v1/instance/{INSTANCE}/metrics",
        None,
        True,
    ),
    ("agent_list", lambda c: c.agent_list(), "GET", "/v1/agents", None, False),
    ("agent_get", lambda c: c.agent_get(AGENT), "GET", f"/v1/agents/{AGENT}", None, False),
    (
        "agent_create",
        lambda c: c.agent_create({"name": "echo", "access": "public"}),
        "POST",
        "/v1/agents/create",
        {"name": "echo", "access": "public"},
        True,
    ),
    (
        "agent_update",
        lambda c: c.agent_update({"name": "echo", "tags": ["x"]}),
        "POST",
        "/v1/agents/update",
        {"name": "echo", "tags": ["x"]},
        True,
    ),
    (
        "agent_delete",
        lambda c: c.agent_delete("echo"),
        "POST",
        "/v1/agents/delete",
        {"name": "echo"},
        True,
    ),
    (
        "agent_allow",
        lambda c: c.agent_allow(AGENT, BOB.address),
        "POST",
        f"/v1/agents/{AGENT}/allow",
        {"address": BOB.address},
        True,
    ),
    (
        "agent_disallow",
        lambda c: c.agent_disallow(AGENT, BOB.address),
        "POST",
        f"/v1/agents/{AGENT}/disallow",
        {"address": BOB.address},
        True,
    ),
    ("model_list", lambda c: c.model_list(), "GET", "/v1/models", None, False),
    ("model_get", lambda c: c.model_get("m1"), "GET", "/v1/models/m1", None, False),
    (
        "model_create",
        lambda c: c.model_create({"name": "llama"}),
        "POST",
        "/v1/models/create",
        {"name": "llama"},
        True,
    ),
    (
        "model_update",
        lambda c: c.model_update({"name": "llama"}),
        "POST",
        "/v1/models/update",
        {"name": "llama"},
        True,
    ),
    (
        "model_delete",
        lambda c: c.model_delete("llama"),
        "POST",
        "/v1/models/delete",
        {"name": "llama"},
        True,
    ),
    (
        "model_allow",
        lambda c: c.model_allow("m1", BOB.address),
        "POST",
        "/v1/models/m1/allow",
        {"address": BOB.address},
        True,
    ),
    (
        "model_disallow",
        lambda c: c.model_disallow("m/1", BOB.address),
        "POST",
        "/v1/models/m%2F1/disallow",
        {"address": BOB.address},
        True,
    ),
    (
        "key_grant",
        lambda c: c.key_grant(BOB.address, ["read", "agent"], NOW_S + 60, spend_cap=5, label="ci"),
        "POST",
        "/v1/key/grant",
        {
            "delegate": BOB.address,
            "scopes": ["read", "agent"],
            "expires_s": NOW_S + 60,
            "spend_cap": 5,
            "label": "ci",
        },
        True,
    ),
    (
        "key_grant_bare",
        lambda c: c.key_grant(BOB.address, ["read"], NOW_S + 60),
        "POST",
        "/v1/key/grant",
        {"delegate": BOB.address, "scopes": ["read"], "expires_s": NOW_S + 60},
        True,
    ),
    (
        "key_revoke",
        lambda c: c.key_revoke(BOB.address),
        "POST",
        "/v1/key/revoke",
        {"delegate": BOB.address},
        True,
    ),
    ("key_list", lambda c: c.key_list(), "GET", "/v1/key/list", None, True),
    (
        "dns_add",
        lambda c: c.dns_add("shop.fog", AGENT),
        "POST",
        "/v1/dns/add",
        {"domain": "shop.fog", "build_id": AGENT},
        True,
    ),
    (
        "dns_remove",
        lambda c: c.dns_remove("shop.fog"),
        "POST",
        "/v1/dns/remove",
        {"domain": "shop.fog"},
        True,
    ),
    ("dns_list", lambda c: c.dns_list(), "GET", "/v1/dns/list", None, False),
    (
        "credits_mint",
        lambda c: c.credits_mint(BOB.address, 100, "mint-1", node=NODE),
        "POST",
        "/v1/billing/credits/mint",
        {"to": BOB.address, "amount": 100, "idempotency_key": "mint-1", "node": NODE},
        True,
    ),
    (
        "credits_transfer",
        lambda c: c.credits_transfer(BOB.address, 7, "pay-1", node=NODE),
        "POST",
        "/v1/billing/credits/transfer",
        {"to": BOB.address, "amount": 7, "idempotency_key": "pay-1", "node": NODE},
        True,
    ),
    (
        "credits_balance",
        lambda c: c.credits_balance(BOB.address),
        "GET",
        f"/v1/billing/balance/{BOB.address}",
        None,
        False,
    ),
]


def client(gateway: FakeGateway, key: Any = ALICE, **kw: Any) -> GatewayClient:
    return GatewayClient(
        "http://127.0.0.1:3004",
        key,
        clock=lambda: gateway.now_s + 0.9,
        transport=gateway.transport,
        **kw,
    )


@pytest.mark.parametrize(
    ("call", "method", "target", "body", "signed"),
    [r[1:] for r in ROUTES],
    ids=[r[0] for r in ROUTES],
)
def test_each_method_sends_exactly_its_route(
    call: Call, method: str, target: str, body: Any, signed: bool
) -> None:
    gateway = FakeGateway().on(method, target, answer(200, {"ok": True}))
    with client(gateway) as c:
        assert call(c) == {"ok": True}
    seen = gateway.last
    assert (seen.method, seen.target) == (method, target)
    if body is None:
        assert seen.body == b""
        assert "content-type" not in seen.headers
    else:
        assert seen.json == body
        # Compact, and the very bytes the signature covers (the fake verifies them).
        assert b" " not in seen.body.replace(b"NAME web", b"")
        assert seen.headers["content-type"] == "application/json"
    assert seen.signer == (ALICE.address if signed else None)
    if signed:
        # The clock's seconds, truncated.
        assert f":{gateway.now_s}:" in seen.headers["x-message"]
        assert seen.headers["x-signer"] == ALICE.address
    # Exactly the signing headers on a signed route, none on a public one.
    assert {name for name in seen.headers if name.startswith("x-")} == (
        {"x-message", "x-signature", "x-signer"} if signed else set()
    )


def test_every_public_method_is_in_the_route_table() -> None:
    public = {
        name
        for name in dir(GatewayClient)
        if not name.startswith("_")
        and name not in ("request", "open_stream", "close", "base_url")
        and callable(getattr(GatewayClient, name))
    }
    covered = {r[0] for r in ROUTES} | {"open_agent_hire", "open_agent_run_task"}
    covered |= {
        "blobs_missing",
        "blob_put",
        "blob_get",
        "blob_batch",
    }  # test_blob_methods_send_their_routes
    covered.add("node_address")  # test_a_billing_order_names_the_gateway_s_node_unless_told_which
    assert public <= covered, public - covered


def test_blob_methods_send_their_routes() -> None:
    digest = "ab" * 32
    gateway = (
        FakeGateway()
        .on("POST", "/v1/blobs/missing", answer(200, {"missing": [digest]}))
        .on("PUT", f"/v1/blobs/{digest}", answer(201, {"digest": digest, "size": 3}))
        .on("GET", f"/v1/blobs/{digest}", httpx.Response(200, content=b"raw"))
        .on("POST", "/v1/blobs/batch", answer(201, {"blobs": 1, "stored": 1}))
    )
    with client(gateway) as c:
        assert c.blobs_missing([digest]) == [digest]
        assert gateway.last.json == {"digests": [digest]}
        assert c.blob_put(digest, b"zst", encoding="zstd") == {"digest": digest, "size": 3}
        seen = gateway.last
        assert (seen.method, seen.body, seen.signer) == ("PUT", b"zst", ALICE.address)
        assert seen.headers["content-encoding"] == "zstd"
        assert seen.headers["content-type"] == "application/octet-stream"
        assert c.blob_get(digest) == b"raw"
        assert gateway.last.signer == ALICE.address
        assert c.blob_batch(b"batch", encoding="zstd") == {"blobs": 1, "stored": 1}
        seen = gateway.last
        assert (seen.method, seen.body, seen.signer) == ("POST", b"batch", ALICE.address)
        assert seen.headers["content-encoding"] == "zstd"


def test_a_delegate_names_the_account_it_acts_for() -> None:
    gateway = FakeGateway().on("GET", "/v1/instance/list", answer(200, {"count": 0}))
    with client(gateway, BOB, act_as=ALICE.address.upper().replace("0X", "0x")) as c:
        c.instance_list()
    assert gateway.last.headers["x-act-as"] == ALICE.address
    # X-Signer names the key that signed, not the account it acts for.
    assert gateway.last.headers["x-signer"] == BOB.address
    assert gateway.last.signer == BOB.address
    assert {name for name in gateway.last.headers if name.startswith("x-")} == {
        "x-message",
        "x-signature",
        "x-signer",
        "x-act-as",
    }


def test_a_signature_by_another_key_than_x_signer_names_is_refused() -> None:
    # What the header is for: a proxy that swaps the signature (here, one that rewrites
    # X-Signer) gets 401 wrong_signer, not a read as some stranger.
    gateway = FakeGateway().on("GET", "/v1/instance/list", answer(200, {"count": 0}))

    def tamper(request: httpx.Request) -> httpx.Response:
        request.headers["X-Signer"] = BOB.address
        return gateway.handle(request)

    with (
        GatewayClient(
            "http://127.0.0.1:3004",
            ALICE,
            clock=lambda: NOW_S,
            transport=httpx.MockTransport(tamper),
        ) as c,
        pytest.raises(ApiError) as raised,
    ):
        c.instance_list()
    assert (raised.value.status, raised.value.code) == (401, "wrong_signer")
    assert gateway.seen == []


def test_ids_cannot_add_path_segments_or_a_query_and_the_escaped_target_is_signed() -> None:
    gateway = FakeGateway().on("GET", "/v1/instance/a%2F..%2Fb%3Fx%3D1/get", answer(200, {}))
    with client(gateway) as c:
        c.instance_get("a/../b?x=1")
    assert gateway.last.signer == ALICE.address


def test_a_signed_route_without_a_key_fails_before_sending() -> None:
    gateway = FakeGateway()
    with client(gateway, None) as c, pytest.raises(ClientError, match="must be signed"):
        c.account_list()
    assert gateway.seen == []


def test_a_refusal_is_an_api_error_with_the_gateway_s_code_message_and_field() -> None:
    gateway = FakeGateway().on(
        "POST",
        "/v1/account/create",
        refuse(400, "invalid_payload", "name must be at most 64 characters", "name"),
    )
    with client(gateway) as c, pytest.raises(ApiError) as raised:
        c.account_create("x" * 100)
    error = raised.value
    assert (error.status, error.code, error.field) == (400, "invalid_payload", "name")
    assert str(error) == error.message == "name must be at most 64 characters"


def test_an_auth_refusal_comes_through_with_its_code() -> None:
    gateway = FakeGateway(now_s=NOW_S + 3600)  # the node's clock is an hour ahead of ours
    with (
        GatewayClient(
            "http://127.0.0.1:3004", ALICE, clock=lambda: NOW_S, transport=gateway.transport
        ) as c,
        pytest.raises(ApiError) as raised,
    ):
        c.key_list()
    assert (raised.value.status, raised.value.code) == (401, "stale")


def test_a_refusal_that_is_not_gateway_json_gets_an_http_code() -> None:
    page = httpx.Response(502, text="<html><body>\n  Bad   Gateway </body></html>")
    gateway = FakeGateway().on("GET", "/v1/health", page)
    with client(gateway) as c, pytest.raises(ApiError) as raised:
        c.health()
    assert raised.value.code == "http_502"
    assert raised.value.message == "<html><body> Bad Gateway </body></html>"


def test_an_answer_that_is_not_json_is_a_client_error() -> None:
    gateway = FakeGateway().on("GET", "/v1/health", httpx.Response(200, text="hello"))
    with client(gateway) as c, pytest.raises(ClientError, match="not JSON"):
        c.health()


def test_nothing_listening_is_gateway_unreachable() -> None:
    with socket.socket() as s:  # a port that was free a moment ago, now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with GatewayClient(f"http://127.0.0.1:{port}", None, timeout_s=5) as c:
        with pytest.raises(GatewayUnreachable) as raised:
            c.health()
        assert raised.value.url == f"http://127.0.0.1:{port}"


def test_a_timeout_is_a_client_error_naming_the_request() -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        GatewayClient("http://127.0.0.1:3004", None, transport=httpx.MockTransport(stall)) as c,
        pytest.raises(ClientError, match="did not answer GET /v1/node/info in time"),
    ):
        c.node_info()


@pytest.mark.parametrize(
    "base",
    [
        "http://127.0.0.1:3004",
        "http://127.0.0.1:3004/",
        "http://127.0.0.1:3004/v1",
        "http://127.0.0.1:3004/v1/",
    ],
)
def test_the_base_url_may_end_in_a_slash_or_v1(base: str) -> None:
    gateway = FakeGateway().on("GET", "/v1/ping", answer(200, {"ping": "pong"}))
    with GatewayClient(base, None, transport=gateway.transport) as c:
        assert c.base_url == "http://127.0.0.1:3004"
        assert c.ping() == {"ping": "pong"}


@pytest.mark.parametrize("base", ["127.0.0.1:3004", "ftp://host", "http://", "http://[::1"])
def test_a_base_url_that_is_not_http_is_refused(base: str) -> None:
    with pytest.raises(ValueError, match="gateway URL"):
        GatewayClient(base, None)


def test_hire_streams_the_answer_in_chunks_and_signs_the_body() -> None:
    def stream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/plain"}, content=iter([b"hel", b"lo ", b"world"])
        )

    gateway = FakeGateway().on("POST", f"/v1/agents/{AGENT}/hire", stream)
    with client(gateway) as c, c.open_agent_hire(AGENT, {"prompt": "hi"}) as answer_:
        assert answer_.status == 200
        assert answer_.content_type == "text/plain"
        assert list(answer_.chunks) == [b"hel", b"lo ", b"world"]
    assert gateway.last.body == b'{"prompt":"hi"}'
    assert gateway.last.signer == ALICE.address


def test_run_task_refused_raises_before_any_chunk() -> None:
    gateway = FakeGateway().on(
        "POST", f"/v1/agents/{AGENT}/run_task", refuse(403, "forbidden", "this agent is private")
    )
    with (
        client(gateway) as c,
        pytest.raises(ApiError, match="private") as raised,
        c.open_agent_run_task(AGENT, {"task": 1}),
    ):
        pass
    assert raised.value.code == "forbidden"


def test_a_billing_order_names_the_gateway_s_node_unless_told_which() -> None:
    gateway = (
        FakeGateway()
        .on("GET", "/v1/node/info", answer(200, {"address": NODE.upper().replace("0X", "0x")}))
        .on("POST", "/v1/billing/credits/transfer", lambda _: answer(200, {"replayed": False}))
    )
    with client(gateway) as c:
        c.credits_transfer(BOB.address, 5, "k-1")
        c.credits_transfer(BOB.address, 6, "k-2")
    # One look-up of the node's address, then two orders naming it (lower case, as signed).
    assert [seen.target for seen in gateway.seen] == [
        "/v1/node/info",
        "/v1/billing/credits/transfer",
        "/v1/billing/credits/transfer",
    ]
    assert gateway.last.json["node"] == NODE
    assert gateway.last.signer == ALICE.address


def test_a_402_carries_its_numbers_in_details() -> None:
    body = {
        "error": "insufficient_credits",
        "message": "needs 9",
        "field": "amount",
        "required": 9,
        "available": 4,
        "available_here": 4,
    }
    gateway = FakeGateway().on("POST", "/v1/billing/credits/transfer", answer(402, body))
    with client(gateway) as c, pytest.raises(ApiError) as raised:
        c.credits_transfer(BOB.address, 9, "k", node=NODE)
    error = raised.value
    assert (error.status, error.code, error.field) == (402, "insufficient_credits", "amount")
    assert (error.details["required"], error.details["available"]) == (9, 4)
