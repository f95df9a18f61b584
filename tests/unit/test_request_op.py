"""Request ops (envelope v2): a signed gateway request as the op every replica verifies."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from node.identity.keys import NodeKey
from node.ledger.op import Op, OpRejected, decode_op
from node.ledger.request_op import (
    RequestRejected,
    canonical_message,
    mutation_of,
    request_op_body,
    sign_line,
)
from node.ledger.state import State, build_id_of, instance_id_of
from tests.helpers import NET, seeded_keys

T_S = 1_760_000_000
ALICE, BOB, DELEGATE = seeded_keys(3, seed=11)


def request_op(
    signer: NodeKey,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    author: str | None = None,
    method: str = "POST",
    t: int = T_S,
    nonce: str | None = None,
    hint: dict[str, Any] | None = None,
    grant: tuple[bytes, bytes] | None = None,
    scheme: str = "personal",
    net: str = NET,
    signed_as: str | None = None,
    v1_line: bool = False,
) -> tuple[bytes, bytes]:
    """A request op as a gateway builds it. A delegated one (``grant``) is signed over the v2
    line naming ``author`` unless ``signed_as`` names another account or ``v1_line`` leaves the
    account out (both forgeries a replica must refuse)."""
    text = "" if body is None else json.dumps(body, separators=(",", ":"))
    nonce = nonce or f"n{random.Random(path + text + str(t)).getrandbits(64):x}"
    act_as = None if grant is None or v1_line else signed_as or author or signer.address
    line = canonical_message(method, path, text.encode(), t, nonce, act_as)
    wire_body = request_op_body(
        net=net,
        author=author or signer.address,
        method=method,
        path=path,
        body_text=text,
        timestamp_s=t,
        nonce=nonce,
        scheme=scheme,
        hint=hint,
        grant=grant,
    )
    return wire_body, sign_line(signer, line, scheme)


def ingest(state: State, wire: tuple[bytes, bytes]) -> Op:
    op, _ = state.ingest(*wire)
    return op


def test_a_signed_request_becomes_the_op_it_names() -> None:
    state = State(NET)
    op = ingest(state, request_op(ALICE, "/v1/account/create", {"name": "alice"}))
    assert (op.kind, op.author, op.via) == ("account.create", ALICE.address, None)
    assert (op.wall_ms, op.logical) == (T_S * 1000, 0)
    assert state.account(ALICE.address)["name"] == "alice"  # type: ignore[index]
    # The unprefixed upstream path means the same.
    assert mutation_of("POST", "/account/create", '{"name":"a"}', ALICE.address, {})[0] == (
        "account.create"
    )


def test_trusted_rebuild_equals_verified_decode() -> None:
    wire = request_op(ALICE, "/v1/instance/create", {"name": "web", "formfile": "NAME web"})
    verified = decode_op(*wire, NET)
    assert Op.trusted(*wire) == verified


def test_the_upstream_double_sha256_scheme_verifies_too() -> None:
    state = State(NET)
    op = ingest(state, request_op(ALICE, "/account/create", {"name": "a"}, scheme="sha256d"))
    assert op.author == ALICE.address


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        # Any change to what the user signed breaks the signature.
        (lambda f: f["req"].update(body='{"name":"mallory"}'), "bad_signature"),
        (lambda f: f["req"].update(path="/v1/account/update"), "bad_signature"),
        (lambda f: f["req"].update(t=T_S + 1), "malformed"),  # hlc is no longer t * 1000
        (lambda f: f.update(hlc=[T_S * 1000 + 1, 0]) or f["req"].update(t=T_S + 1), "malformed"),
        (
            lambda f: f["req"].update(t=T_S + 1) or f.update(hlc=[(T_S + 1) * 1000, 0]),
            "bad_signature",
        ),
        (lambda f: f.update(author=BOB.address), "bad_signature"),
        (lambda f: f.update(net="othernet"), "wrong_network"),
        (lambda f: f.update(scheme="sha256d"), "bad_signature"),
        (lambda f: f.update(extra=1), "malformed"),
        (lambda f: f["req"].update(nonce="bad nonce!"), "malformed_message"),
        (lambda f: f.update(hint={"evil": 1}), "malformed"),
    ],
)
def test_tampering_is_refused_by_any_replica(mutate: Any, code: str) -> None:
    body, sig = request_op(ALICE, "/v1/account/create", {"name": "alice"})
    fields = json.loads(body)
    mutate(fields)
    tampered = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    state = State(NET)
    with pytest.raises(OpRejected) as refused:
        state.ingest(tampered, sig)
    assert refused.value.code == code
    assert state.op_count == 0


def test_a_non_canonical_envelope_is_refused() -> None:
    body, sig = request_op(ALICE, "/v1/account/create", {"name": "alice"})
    with pytest.raises(OpRejected) as refused:
        decode_op(json.dumps(json.loads(body), indent=1).encode(), sig, NET)
    assert refused.value.code == "not_canonical"


def test_a_wrong_name_hint_cannot_reach_another_owners_instance() -> None:
    state = State(NET)
    ingest(state, request_op(ALICE, "/v1/instance/create", {"name": "web", "formfile": "x"}))
    alice_web = instance_id_of(ALICE.address, "web")
    ingest(state, request_op(BOB, "/v1/instance/create", {"name": "web", "formfile": "x"}))
    # Bob signs "stop Alice's instance" with his own name as hint: the ids do not match.
    for hint in ({"name": "web"}, {"name": "other"}):
        with pytest.raises(OpRejected) as refused:
            state.ingest(*request_op(BOB, f"/v1/instance/{alice_web}/stop", hint=hint))
        assert refused.value.code == "unauthorized"
    op = ingest(state, request_op(ALICE, f"/v1/instance/{alice_web}/stop", hint={"name": "web"}))
    assert op.kind == "instance.stop"
    assert state.instance(alice_web)["desired_state"] == "stopped"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/account/create", [1, 2], "invalid_json"),
        ("/v1/account/create", "not json", "invalid_json"),
        ("/v1/account/create?x=1", {"name": "a"}, "invalid_request"),
        ("/v1/nowhere", {}, "not_found"),
        ("/v1/account/create", {"name": "a", "is_global_admin": True}, "invalid_payload"),
        ("/v1/account/create", {"credits": 10**6}, "invalid_payload"),
    ],
)
def test_requests_that_change_nothing_are_refused(path: str, body: Any, code: str) -> None:
    text = body if isinstance(body, str) else json.dumps(body)

    def derive_and_check() -> None:
        kind, payload = mutation_of("POST", path, text, ALICE.address, {})
        State.check_op(Op(b"", b"", b"", ALICE.address, 0, 0, kind, NET, payload))

    with pytest.raises(OpRejected) as refused:
        derive_and_check()
    assert refused.value.code == code


def test_floats_in_request_bodies_are_refused() -> None:
    with pytest.raises(OpRejected, match="integers"):
        mutation_of("POST", "/v1/account/create", '{"name":1.5}', ALICE.address, {})


def _grant(scopes: list[str], expires_s: int = T_S + 3600) -> tuple[bytes, bytes]:
    return request_op(
        ALICE,
        "/v1/key/grant",
        {"delegate": DELEGATE.address, "scopes": scopes, "expires_s": expires_s},
        t=T_S - 10,
    )


def test_a_delegated_key_acts_for_the_account_within_its_grant() -> None:
    state = State(NET)
    grant = _grant(["instance", "read"])
    ingest(state, grant)
    op = ingest(
        state,
        request_op(
            DELEGATE,
            "/v1/instance/create",
            {"name": "job", "formfile": "x"},
            author=ALICE.address,
            grant=grant,
        ),
    )
    assert (op.author, op.via) == (ALICE.address, DELEGATE.address)
    assert state.instance(instance_id_of(ALICE.address, "job"))["instance_owner"] == ALICE.address  # type: ignore[index]
    # A replica that never saw the grant op still verifies it: it travels inside the op.
    fresh = State(NET)
    assert ingest(fresh, (op.body, op.sig)).author == ALICE.address
    assert Op.trusted(op.body, op.sig).via == DELEGATE.address


@pytest.mark.parametrize("forgery", ["v1 line", "another account"])
def test_a_delegated_op_whose_signature_does_not_name_the_account_is_refused(
    forgery: str,
) -> None:
    """The account a delegate acts for is inside the signature: an op whose signed line leaves
    it out (X-Act-As only), or names another account, recovers no signer the grant names."""
    state = State(NET)
    grant = _grant(["instance"])
    ingest(state, grant)
    wire = request_op(
        DELEGATE,
        "/v1/instance/create",
        {"name": "job", "formfile": "x"},
        author=ALICE.address,
        grant=grant,
        v1_line=forgery == "v1 line",
        signed_as=BOB.address if forgery == "another account" else None,
    )
    before = state.state_hash()
    with pytest.raises(RequestRejected) as caught:
        state.ingest(*wire)
    assert caught.value.code == "unauthorized"
    assert state.instance(instance_id_of(ALICE.address, "job")) is None
    assert state.state_hash() == before


@pytest.mark.parametrize(
    ("scopes", "expires_s", "path", "body", "signer", "needle"),
    [
        (
            ["read"],
            T_S + 60,
            "/v1/instance/create",
            {"name": "j", "formfile": "x"},
            DELEGATE,
            "scope",
        ),
        (
            ["instance"],
            T_S - 1,
            "/v1/instance/create",
            {"name": "j", "formfile": "x"},
            DELEGATE,
            "expired",
        ),
        (
            ["instance"],
            T_S + 60,
            "/v1/instance/create",
            {"name": "j", "formfile": "x"},
            BOB,
            "grant is for",
        ),
        (
            ["account", "instance", "agent", "model", "read", "hire"],
            T_S + 60,
            "/v1/key/grant",
            {"delegate": BOB.address, "scopes": ["read"], "expires_s": T_S + 60},
            DELEGATE,
            "cannot be done with a delegated key",
        ),
    ],
)
def test_delegation_outside_the_grant_is_refused(
    scopes: list[str], expires_s: int, path: str, body: Any, signer: NodeKey, needle: str
) -> None:
    grant = _grant(scopes, expires_s)
    with pytest.raises(OpRejected, match=needle) as refused:
        decode_op(*request_op(signer, path, body, author=ALICE.address, grant=grant), NET)
    assert refused.value.code == "unauthorized"


def test_a_grant_signed_by_someone_else_does_not_delegate() -> None:
    # Bob grants the delegate a key, and the delegate claims to act for Alice with it.
    bobs = request_op(
        BOB,
        "/v1/key/grant",
        {"delegate": DELEGATE.address, "scopes": ["instance"], "expires_s": T_S + 60},
    )
    with pytest.raises(OpRejected, match="grant is from"):
        decode_op(
            *request_op(
                DELEGATE,
                "/v1/instance/create",
                {"name": "j", "formfile": "x"},
                author=ALICE.address,
                grant=bobs,
            ),
            NET,
        )


def test_grant_and_revoke_are_last_writer_wins_and_order_free() -> None:
    grant = _grant(["instance"])
    revoke = request_op(ALICE, "/v1/key/revoke", {"delegate": DELEGATE.address}, t=T_S + 5)
    one, two = State(NET), State(NET)
    for wire in (grant, revoke):
        ingest(one, wire)
    for wire in (revoke, grant):
        ingest(two, wire)
    assert one.state_hash() == two.state_hash()
    assert one.grant(ALICE.address, DELEGATE.address)["revoked"] is True  # type: ignore[index]
    assert one.grants_to(DELEGATE.address) == []
    with pytest.raises(OpRejected, match="to itself"):
        ingest(
            State(NET),
            request_op(
                ALICE, "/v1/key/grant", {"delegate": ALICE.address, "scopes": [], "expires_s": 1}
            ),
        )


def test_request_ops_converge_in_any_order_with_v1_ops() -> None:
    wires = [
        request_op(ALICE, "/v1/account/create", {"name": "a"}, t=T_S),
        request_op(ALICE, "/v1/account/update", {"description": "first"}, t=T_S + 1),
        request_op(ALICE, "/v1/account/update", {"description": "second"}, t=T_S + 2),
        request_op(ALICE, "/v1/agents/create", {"name": "bot", "access": "private"}, t=T_S + 3),
        request_op(
            ALICE,
            f"/v1/agents/{build_id_of(ALICE.address, 'bot')}/allow",
            {"address": BOB.address},
            hint={"name": "bot"},
            t=T_S + 4,
        ),
    ]
    rng = random.Random(5)
    hashes = set()
    for _ in range(6):
        state = State(NET)
        order = wires[:]
        rng.shuffle(order)
        for wire in order + order[:2]:  # duplicates are no-ops
            state.ingest(*wire)
        hashes.add(state.state_hash())
        assert state.account(ALICE.address)["description"] == "second"  # type: ignore[index]
        assert state.agent(build_id_of(ALICE.address, "bot"))["allow_list"] == [BOB.address]  # type: ignore[index]
    assert len(hashes) == 1


def test_the_gateway_orders_one_second_but_the_signed_second_dates_the_op() -> None:
    grant = request_op(
        ALICE,
        "/v1/key/grant",
        {"delegate": DELEGATE.address, "scopes": ["read"], "expires_s": T_S + 60},
    )
    fields = json.loads(grant[0])
    assert fields["hlc"] == [T_S * 1000, 0]
    state = State(NET)
    # Grant then revoke within the same signed second: the gateway's HLC orders them.
    body = request_op_body(
        net=NET,
        author=ALICE.address,
        method="POST",
        path="/v1/key/revoke",
        body_text=json.dumps({"delegate": DELEGATE.address}),
        timestamp_s=T_S,
        nonce="revoke-nonce",
        logical=1,
    )
    line = canonical_message(
        "POST",
        "/v1/key/revoke",
        json.dumps({"delegate": DELEGATE.address}).encode(),
        T_S,
        "revoke-nonce",
    )
    revoke = (body, sign_line(ALICE, line))
    for wire in (revoke, grant):
        ingest(state, wire)
    assert state.grant(ALICE.address, DELEGATE.address)["revoked"] is True  # type: ignore[index]
    # A gateway cannot date a request later than the second the user signed.
    far = dict(fields, hlc=[T_S * 1000 + 1, 0])
    with pytest.raises(OpRejected, match="signed second"):
        decode_op(json.dumps(far, sort_keys=True, separators=(",", ":")).encode(), grant[1], NET)


def test_a_request_replayed_through_another_gateway_cannot_undo_later_writes() -> None:
    first = request_op(ALICE, "/v1/account/update", {"description": "A"}, t=T_S, nonce="nonce-a-1")
    later = request_op(ALICE, "/v1/account/update", {"description": "B"}, t=T_S + 1)
    # The attacker replays the first request at a gateway that never saw its nonce: that
    # gateway gives it a high arrival counter, but the op is still dated the signed second.
    fields = json.loads(first[0])
    replay = dict(fields, hlc=[T_S * 1000, 4_000_000])
    replayed = (json.dumps(replay, sort_keys=True, separators=(",", ":")).encode(), first[1])
    state = State(NET)
    for wire in (first, later, replayed):
        ingest(state, wire)
    assert state.tables["accounts"][ALICE.address].fields.to_dict()["description"] == "B"


def test_a_recreated_entity_starts_afresh_in_any_order() -> None:
    agent_id = build_id_of(ALICE.address, "priv")
    create = request_op(
        ALICE,
        "/v1/agents/create",
        {"name": "priv", "access": "private", "description": "old"},
        t=T_S,
    )
    allow = request_op(
        ALICE,
        f"/v1/agents/{agent_id}/allow",
        {"address": BOB.address},
        hint={"name": "priv"},
        t=T_S + 1,
    )
    first = State(NET)
    for wire in (create, allow):
        ingest(first, wire)
    tags = first.allow_tags("agents", agent_id, None)
    delete = request_op(
        ALICE, "/v1/agents/delete", {"name": "priv"}, hint={"tags": tags}, t=T_S + 2
    )
    again = request_op(ALICE, "/v1/agents/create", {"name": "priv", "access": "private"}, t=T_S + 3)
    wires = [create, allow, delete, again]
    rng = random.Random(3)
    hashes = set()
    for _ in range(5):
        state = State(NET)
        order = wires[:]
        rng.shuffle(order)
        for wire in order:
            ingest(state, wire)
        agent = state.agent(agent_id)
        assert agent is not None
        assert agent["allow_list"] == []
        assert "description" not in agent
        hashes.add(state.state_hash())
    assert len(hashes) == 1


def test_duplicate_keys_in_a_request_body_are_refused() -> None:
    with pytest.raises(OpRejected, match="twice") as refused:
        mutation_of("POST", "/v1/account/create", '{"name":"a","name":"b"}', ALICE.address, {})
    assert refused.value.code == "invalid_json"


def test_the_signer_memo_changes_no_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    import node.ledger.request_op as request_op
    from node.ledger.request_op import canonical_message, recover_line_signer, sign_line

    alice, mallory = seeded_keys(2, seed=2323)
    recoveries: list[bytes] = []
    real = request_op.recover_address

    def counted(digest: bytes, sig: bytes) -> str:
        recoveries.append(sig)
        return real(digest, sig)

    monkeypatch.setattr(request_op, "recover_address", counted)
    line = canonical_message("POST", "/v1/account/update", b"{}", 1_700_000_000, "memo-1")
    sig = sign_line(alice, line)
    assert recover_line_signer(line, sig, "personal") == alice.address
    assert recover_line_signer(line, sig, "personal") == alice.address
    assert len(recoveries) == 1  # the second asks the memo
    # Another signature, scheme or line is recovered afresh and gets its own answer.
    assert recover_line_signer(line, sign_line(mallory, line), "personal") == mallory.address
    assert recover_line_signer(line, sig, "sha256d") != alice.address
    other = line.replace("memo-1", "memo-2")
    assert recover_line_signer(other, sig, "personal") != alice.address
    assert len(recoveries) == 4
    # A failure is not remembered as an answer: it fails every time, and is recovered each time.
    bad = sig[:64] + bytes([29])
    for _ in range(2):
        with pytest.raises(OpRejected, match="bad_signature"):
            recover_line_signer(line, bad, "personal")
    # A long line is still verified, just not memoized.
    long_line = canonical_message("GET", "/v1/x?" + "a" * 2000, b"", 1_700_000_000, "memo-3")
    long_sig = sign_line(alice, long_line)
    before = len(recoveries)
    for _ in range(2):
        assert recover_line_signer(long_line, long_sig, "personal") == alice.address
    assert len(recoveries) == before + 2
