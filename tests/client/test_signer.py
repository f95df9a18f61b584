"""Request signing: what the client signs is what the gateway verifies, and any wallet agrees."""

import re

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from node.client.api import new_nonce
from node.client.signer import sign_request
from node.gateway.auth import AuthError, NonceCache, canonical_message, verify
from tests.helpers import seeded_keys

ALICE, BOB = seeded_keys(2, seed=61)
NOW_S = 1_790_000_000
NONCE = "n0nce-abcdefghijk"
BODY = b'{"name":"alice"}'


def test_the_headers_verify_as_the_signer_at_the_gateway() -> None:
    headers = sign_request(ALICE, "POST", "/v1/account/create", BODY, NOW_S, NONCE)
    assert set(headers) == {"X-Message", "X-Signature"}
    assert headers["X-Message"] == canonical_message(
        "POST", "/v1/account/create", BODY, NOW_S, NONCE
    )
    signer = verify("POST", "/v1/account/create", BODY, headers, NOW_S, NonceCache())
    assert signer == ALICE.address


def test_eth_account_recovers_the_same_address_and_signs_the_same_bytes() -> None:
    headers = sign_request(BOB, "GET", "/v1/account/list?x=1", b"", NOW_S, NONCE)
    line = headers["X-Message"]
    assert re.fullmatch(r"0x[0-9a-f]{130}", headers["X-Signature"])
    assert int(headers["X-Signature"][-2:], 16) in (27, 28)
    recovered = Account.recover_message(encode_defunct(text=line), signature=headers["X-Signature"])
    assert recovered.lower() == BOB.address
    # RFC 6979 signatures are deterministic: a wallet signing the same line gives the same bytes.
    theirs = Account.sign_message(encode_defunct(text=line), private_key=BOB.secret).signature
    assert headers["X-Signature"] == "0x" + bytes(theirs).hex()


def test_method_is_upper_cased_in_the_line() -> None:
    headers = sign_request(ALICE, "post", "/v1/agents/create", b"{}", NOW_S, NONCE)
    assert headers["X-Message"].startswith("formation:v1:POST:/v1/agents/create:")


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("PUT", "/v1/account/create", BODY, "message_mismatch"),
        ("POST", "/v1/account/update", BODY, "message_mismatch"),
        ("POST", "/v1/account/create", b'{"name":"mallory"}', "message_mismatch"),
    ],
)
def test_a_signature_does_not_cover_another_request(
    method: str, path: str, body: bytes, code: str
) -> None:
    headers = sign_request(ALICE, "POST", "/v1/account/create", BODY, NOW_S, NONCE)
    with pytest.raises(AuthError) as raised:
        verify(method, path, body, headers, NOW_S, NonceCache())
    assert raised.value.code == code


def test_the_same_signed_request_cannot_be_replayed() -> None:
    headers = sign_request(ALICE, "POST", "/v1/account/create", BODY, NOW_S, NONCE)
    nonces = NonceCache()
    verify("POST", "/v1/account/create", BODY, headers, NOW_S, nonces)
    with pytest.raises(AuthError, match="already used"):
        verify("POST", "/v1/account/create", BODY, headers, NOW_S + 1, nonces)


def test_the_default_nonce_is_accepted_and_fresh() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    for nonce in nonces:
        assert re.fullmatch(r"[A-Za-z0-9_-]{16}", nonce)
        sign_request(ALICE, "GET", "/v1/key/list", b"", NOW_S, nonce)


@pytest.mark.parametrize(
    "nonce",
    ["short-nonce", "x" * 65, "has space in it!!", "ünïcödé-nonce-xx", "a:b:c:d:e:f:g:h:i"],
)
def test_a_nonce_the_gateway_would_refuse_is_refused_here(nonce: str) -> None:
    with pytest.raises(ValueError, match="token_urlsafe"):
        sign_request(ALICE, "GET", "/v1/key/list", b"", NOW_S, nonce)


@pytest.mark.parametrize("path", ["v1/key/list", "/v1/agents/é", ""])
def test_a_path_that_is_not_a_request_target_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="request target"):
        sign_request(ALICE, "GET", path, b"", NOW_S, NONCE)
