"""The op envelope: forged, tampered, replayed and malformed ops are refused."""

import json

import pytest

from node.ledger.op import OP_BODY_BYTES_MAX, OpRejected, canonical_json, decode_op, sign_op
from tests.helpers import NET, op, seeded_keys

ALICE, MALLORY = seeded_keys(2)


def test_a_signed_op_verifies_and_round_trips() -> None:
    made = op(ALICE, "account.create", {"name": "alice"})
    decoded = decode_op(made.body, made.sig, NET)
    assert decoded == made
    assert decoded.author == ALICE.address
    assert decoded.stamp == (made.wall_ms, 0, ALICE.address, made.id)


def test_signature_v_may_be_0_or_1_as_well_as_27_or_28() -> None:
    made = op(ALICE, "account.create", {})
    raw_v = made.sig[:64] + bytes((made.sig[64] - 27,))
    assert decode_op(made.body, raw_v, NET).author == ALICE.address


def test_a_tampered_payload_no_longer_verifies_as_its_author() -> None:
    made = op(ALICE, "account.update", {"name": "alice"})
    tampered = made.body.replace(b'"alice"', b'"mallory"')
    with pytest.raises(OpRejected) as info:
        decode_op(tampered, made.sig, NET)
    assert info.value.code == "bad_signature"


def test_a_forged_author_is_refused() -> None:
    # Mallory signs a body that claims Alice wrote it.
    fields = json.loads(op(ALICE, "account.delete", {}).body)
    body = canonical_json(fields)
    forged_sig = MALLORY.sign_personal(body)
    with pytest.raises(OpRejected, match="signed by 0x") as info:
        decode_op(body, forged_sig, NET)
    assert info.value.code == "bad_signature"


def test_an_op_for_another_network_is_refused() -> None:
    devnet = sign_op(ALICE, "devnet", (1, 0), "account.create", {})
    with pytest.raises(OpRejected) as info:
        decode_op(devnet.body, devnet.sig, NET)
    assert info.value.code == "wrong_network"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "malformed"),
        (b"[1,2]", "malformed"),
        (
            b'{"author":"0x00","hlc":[1,0],"kind":"k","net":"testnet","payload":{},"v":1,"x":1}',
            "malformed",
        ),
        (
            b'{"author":"0x00","hlc":[1.5,0],"kind":"k","net":"testnet","payload":{},"v":1}',
            "malformed",
        ),
        (
            b'{"author":"0x00","hlc":[-1,0],"kind":"k","net":"testnet","payload":{},"v":1}',
            "malformed",
        ),
        (
            b'{"author":"0x00","hlc":[1,0],"kind":"k","net":"testnet","payload":[],"v":1}',
            "malformed",
        ),
        (
            b'{"author":"0x00","hlc":[1,0],"kind":"k","net":"testnet","payload":{},"v":3}',
            "unsupported_version",
        ),
        (
            b'{"v":1,"author":"0x00","hlc":[1,0],"kind":"k","net":"testnet","payload":{}}',
            "not_canonical",
        ),
        (
            b'{"author":"0x00", "hlc":[1,0],"kind":"k","net":"testnet","payload":{},"v":1}',
            "not_canonical",
        ),
        (
            b'{"author":"0x00","author":"0x00","hlc":[1,0],"kind":"k","net":"testnet","payload":{},"v":1}',
            "not_canonical",
        ),
        (b"[" * 100_000, "malformed"),
    ],
)
def test_malformed_bodies_are_refused_with_a_code(body: bytes, code: str) -> None:
    with pytest.raises(OpRejected) as info:
        decode_op(body, b"\x01" * 65, NET)
    assert info.value.code == code


def test_oversized_bodies_and_bad_signature_lengths_are_refused_before_parsing() -> None:
    with pytest.raises(OpRejected) as info:
        decode_op(b"{" + b" " * OP_BODY_BYTES_MAX + b"}", b"\x00" * 65, NET)
    assert info.value.code == "too_large"
    made = op(ALICE, "account.create", {})
    with pytest.raises(OpRejected) as info:
        decode_op(made.body, made.sig[:64], NET)
    assert info.value.code == "bad_signature"


def test_signing_refuses_floats_and_oversized_payloads() -> None:
    with pytest.raises(OpRejected, match="integers only"):
        op(ALICE, "account.update", {"x": 1.5})
    with pytest.raises(OpRejected) as info:
        op(ALICE, "instance.create", {"formfile": "x" * OP_BODY_BYTES_MAX})
    assert info.value.code == "too_large"


def test_the_op_id_is_the_digest_the_author_signed() -> None:
    from node.identity.keys import eip191_hash, recover_address

    made = op(ALICE, "account.create", {"name": "a"})
    assert made.id == eip191_hash(made.body)
    assert recover_address(made.id, made.sig) == ALICE.address
