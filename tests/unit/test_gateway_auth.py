"""Signed-request authentication: wallets' signatures verify; tampering and replays do not."""

import hashlib

import coincurve
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from node.gateway.auth import AuthError, NonceCache, authenticate, canonical_message, verify
from tests.helpers import seeded_keys

ALICE, BOB = seeded_keys(2, seed=51)
NOW = 1_790_000_000
BODY = b'{"name":"alice"}'


def signed(
    key=ALICE, method="POST", path="/v1/account/create", body=BODY, ts=NOW, nonce="nonce-0001"
) -> dict[str, str]:
    line = canonical_message(method, path, body, ts, nonce)
    sig = Account.sign_message(encode_defunct(text=line), private_key=key.secret).signature
    return {"X-Message": line, "X-Signature": "0x" + bytes(sig).hex()}


def check(
    headers: dict[str, str],
    method="POST",
    path="/v1/account/create",
    body=BODY,
    now=NOW,
    cache=None,
) -> str:
    return verify(method, path, body, headers, now, cache or NonceCache())


def test_an_eth_account_signed_request_is_accepted_as_its_signer() -> None:
    assert check(signed()) == ALICE.address


def test_v_as_0_1_and_a_64_byte_signature_with_recovery_id_are_accepted() -> None:
    headers = signed()
    sig = bytes.fromhex(headers["X-Signature"][2:])
    assert (
        check({**headers, "X-Signature": (sig[:64] + bytes((sig[64] - 27,))).hex()})
        == ALICE.address
    )
    short = {
        "X-Message": headers["X-Message"],
        "X-Signature": sig[:64].hex(),
        "X-Recovery-Id": str(sig[64] - 27),
    }
    assert check(short) == ALICE.address


def test_the_upstream_authorization_carrier_is_accepted() -> None:
    line = canonical_message("POST", "/v1/account/create", BODY, NOW, "nonce-0002").encode()
    # k256's sign_recoverable(SHA256(M)) signs SHA256(SHA256(M)), with no EIP-191 prefix.
    digest = hashlib.sha256(hashlib.sha256(line).digest()).digest()
    raw = coincurve.PrivateKey(ALICE.secret).sign_recoverable(digest, hasher=None)
    headers = {"Authorization": f"Signature {raw[:64].hex()}.{raw[64]}.{line.hex()}"}
    assert check(headers) == ALICE.address


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"method": "PUT"}, "message_mismatch"),
        ({"path": "/v1/account/delete"}, "message_mismatch"),
        ({"body": b'{"name":"mallory"}'}, "message_mismatch"),
        ({"now": NOW + 301}, "stale"),
        ({"now": NOW - 301}, "stale"),
    ],
)
def test_a_request_that_does_not_match_its_signature_is_refused(
    change: dict[str, object], code: str
) -> None:
    with pytest.raises(AuthError) as info:
        check(signed(), **change)  # type: ignore[arg-type]
    assert info.value.code == code


def test_a_replayed_request_is_refused_but_a_new_nonce_passes() -> None:
    cache = NonceCache()
    headers = signed()
    assert check(headers, cache=cache) == ALICE.address
    with pytest.raises(AuthError) as info:
        check(headers, cache=cache)
    assert info.value.code == "replayed"
    assert check(signed(nonce="nonce-0003"), cache=cache) == ALICE.address
    assert check(signed(key=BOB), cache=cache) == BOB.address  # nonces are per signer


def test_a_tampered_message_is_not_alices_request() -> None:
    headers = signed()
    tampered = {**headers, "X-Message": headers["X-Message"].replace("/create", "/delete")}
    # The signature no longer belongs to the line: it recovers some unrelated key, which owns
    # nothing of Alice's; the request can never act as Alice.
    signer = check(tampered, path="/v1/account/delete")
    assert signer != ALICE.address


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_signature"),
        ({"X-Message": "formation:v1:POST:/x:" + "0" * 64 + ":1:nonce-0001"}, "missing_signature"),
        ({"X-Message": "hello", "X-Signature": "0x" + "11" * 65}, "bad_signature"),
        ({"X-Message": "hello", "X-Signature": "zz"}, "malformed_signature"),
        ({"X-Message": "hello", "X-Signature": "11" * 64}, "malformed_signature"),
        ({"Authorization": "Signature abc"}, "malformed_signature"),
    ],
)
def test_malformed_headers_are_refused_with_a_code(headers: dict[str, str], code: str) -> None:
    with pytest.raises(AuthError) as info:
        check(headers)
    assert info.value.code == code


@pytest.mark.parametrize(
    "line",
    [
        "hello",
        "formation:v1:post:/x:" + "0" * 64 + ":1:nonce-0001",
        "formation:v1:POST:x:" + "0" * 64 + ":1:nonce-0001",
        "formation:v1:POST:/x:" + "0" * 63 + ":1:nonce-0001",
        "formation:v1:POST:/x:" + "0" * 64 + ":-1:nonce-0001",
        "formation:v1:POST:/x:" + "0" * 64 + ":1:short",
        # v2 (a delegated key's line) must end with the account it acts for, lower-case.
        "formation:v2:POST:/x:" + "0" * 64 + ":1:nonce-0001",
        "formation:v2:POST:/x:" + "0" * 64 + ":1:nonce-0001:0x" + "AB" * 20,
        "formation:v2:POST:/x:" + "0" * 64 + ":1:nonce-0001:0x" + "ab" * 19,
        "formation:v3:POST:/x:" + "0" * 64 + ":1:nonce-0001",
    ],
)
def test_a_malformed_signed_line_is_refused(line: str) -> None:
    sig = Account.sign_message(encode_defunct(text=line), private_key=ALICE.secret).signature
    with pytest.raises(AuthError) as info:
        check({"X-Message": line, "X-Signature": bytes(sig).hex()}, path="/x")
    assert info.value.code == "malformed_message"


def test_the_nonce_cache_forgets_old_entries_and_is_bounded() -> None:
    cache = NonceCache(window_s=10, entries_max=3)
    for i in range(3):
        cache.use(ALICE.address, f"nonce-{i:04d}", NOW, NOW)
    with pytest.raises(AuthError) as info:
        cache.use(ALICE.address, "nonce-0009", NOW, NOW)
    assert info.value.code == "busy"
    cache.use(ALICE.address, "nonce-0009", NOW + 21, NOW + 21)  # the old ones expired


def test_a_v2_line_names_the_account_its_signer_acts_for() -> None:
    account = "0x" + "ab" * 20
    line = canonical_message("POST", "/x", BODY, NOW, "nonce-0003", account)
    assert line.startswith("formation:v2:POST:/x:")
    assert line.endswith(":nonce-0003:" + account)
    sig = Account.sign_message(encode_defunct(text=line), private_key=ALICE.secret).signature
    signed = authenticate(
        "POST", "/x", BODY, {"X-Message": line, "X-Signature": bytes(sig).hex()}, NOW, NonceCache()
    )
    assert (signed.signer, signed.act_as, signed.nonce) == (ALICE.address, account, "nonce-0003")
