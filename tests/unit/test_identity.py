"""node.identity.keys against independent implementations: eth-account (eth-keys) and py-ecc.

Every key here comes from a seeded ``random.Random``, so a failure names a reproducible key.
"""

from __future__ import annotations

import random

import pytest
from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct
from eth_utils.address import to_checksum_address
from py_ecc.secp256k1 import secp256k1 as ecc

from node.identity.keys import (
    InvalidSignature,
    NodeKey,
    checksum_address,
    eip191_hash,
    normalize_address,
    recover_address,
    recover_personal,
)

SEEDS = [0, 1, 2, 7, 42, 1234, 99_999]
N = ecc.N

# Text (UTF-8 encoded by both sides), raw bytes, empty and non-ASCII messages. The byte string
# with a 0x19 and invalid UTF-8 makes sure nobody decodes or re-prefixes it along the way.
MESSAGES: list[str | bytes] = [
    "hello formation",
    "",
    b"",
    "héllo wörld ✓ 你好 🚀",
    b"\x19\x00\xff\xfe raw bytes",
    "x" * 1000,
]


def seeded_key(seed: int) -> NodeKey:
    return NodeKey.generate(random.Random(seed).randbytes)


def as_bytes(message: str | bytes) -> bytes:
    return message.encode("utf-8") if isinstance(message, str) else message


def defunct(message: str | bytes) -> SignableMessage:
    if isinstance(message, str):
        return encode_defunct(text=message)
    return encode_defunct(primitive=message)


def with_v(signature: bytes, v: int) -> bytes:
    return signature[:64] + bytes((v,))


# ------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("seed", SEEDS)
def test_address_matches_eth_account(seed: int) -> None:
    key = seeded_key(seed)
    theirs = Account.from_key(key.secret).address
    assert key.address == theirs.lower()
    assert key.address.startswith("0x")
    assert len(key.address) == 42


def test_generate_is_deterministic_under_a_seed() -> None:
    assert seeded_key(5).address == seeded_key(5).address
    assert seeded_key(5).address != seeded_key(6).address


@pytest.mark.parametrize("seed", SEEDS)
def test_checksum_matches_eth_account(seed: int) -> None:
    key = seeded_key(seed)
    expected = Account.from_key(key.secret).address
    assert checksum_address(key.address) == expected
    assert checksum_address(key.address.upper().replace("0X", "0x")) == expected
    assert to_checksum_address(key.address) == expected


@pytest.mark.parametrize(
    "address",
    [
        # The EIP-55 specification's own vectors.
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ],
)
def test_checksum_eip55_vectors(address: str) -> None:
    assert checksum_address(address.lower()) == address
    assert to_checksum_address(address.lower()) == address


def test_normalize_address_accepts_every_spelling() -> None:
    canonical = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
    for spelling in (
        canonical,
        canonical[2:],
        canonical.upper(),
        "0X" + canonical[2:].upper(),
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    ):
        assert normalize_address(spelling) == canonical


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "40 hex digits"),
        ("0x", "40 hex digits"),
        ("0x" + "ab" * 19, "got 38 digits"),
        ("0x" + "ab" * 21, "got 42 digits"),
        ("ab" * 20 + "ab", "got 42 digits"),
        ("0x" + "zz" * 20, "an address is hex"),
        ("0x" + "ab" * 19 + "g1", "an address is hex"),
        ("0x" + " " * 40, "an address is hex"),
    ],
)
def test_normalize_address_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        normalize_address(text)


# ------------------------------------------------------------------------------ signatures


@pytest.mark.parametrize("seed", SEEDS[:4])
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: repr(m)[:20])
def test_sign_personal_is_byte_identical_to_eth_account(seed: int, message: str | bytes) -> None:
    key = seeded_key(seed)
    ours = key.sign_personal(as_bytes(message))
    theirs = Account.sign_message(defunct(message), key.secret)
    assert ours == bytes(theirs.signature)
    assert ours[64] in (27, 28)
    assert eip191_hash(as_bytes(message)) == bytes(theirs.message_hash)


@pytest.mark.parametrize("seed", SEEDS[:4])
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: repr(m)[:20])
def test_each_recovers_the_others_signature(seed: int, message: str | bytes) -> None:
    key = seeded_key(seed)
    ours = key.sign_personal(as_bytes(message))
    theirs = bytes(Account.sign_message(defunct(message), key.secret).signature)
    assert recover_personal(as_bytes(message), theirs) == key.address
    recovered = Account.recover_message(defunct(message), signature=ours)
    assert recovered == checksum_address(key.address)


def test_recovery_of_a_different_message_gives_a_different_address() -> None:
    key = seeded_key(3)
    signature = key.sign_personal(b"pay 1")
    assert recover_personal(b"pay 2", signature) != key.address


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_v_is_accepted_as_0_1_and_27_28(seed: int) -> None:
    key = seeded_key(seed)
    for i in range(8):  # enough messages to see both recovery ids
        message = f"message {i}".encode()
        signature = key.sign_personal(message)
        recid = signature[64] - 27
        assert recover_personal(message, with_v(signature, recid)) == key.address
        assert recover_personal(message, with_v(signature, recid + 27)) == key.address
        # The other recovery id is a valid signature of somebody else: never our address.
        other = recover_personal(message, with_v(signature, 1 - recid))
        assert other != key.address


def test_both_recovery_ids_occur_under_the_seed() -> None:
    key = seeded_key(11)
    ids = {key.sign_personal(f"m{i}".encode())[64] for i in range(32)}
    assert ids == {27, 28}


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_high_s_twin_is_rejected(seed: int) -> None:
    key = seeded_key(seed)
    message = b"malleable?"
    signature = key.sign_personal(message)
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    assert s <= N // 2  # libsecp256k1 signs low-s
    twin_v = 27 + (1 - (signature[64] - 27))
    twin = signature[:32] + (N - s).to_bytes(32, "big") + bytes((twin_v,))
    # The twin is a valid ECDSA signature for the same key (py-ecc recovers it)...
    digest = eip191_hash(message)
    assert ecc.ecdsa_raw_recover(digest, (twin_v, r, N - s)) == ecc.privtopub(key.secret)
    # ...which is exactly why we refuse it.
    with pytest.raises(InvalidSignature, match="upper half"):
        recover_personal(message, twin)


@pytest.mark.parametrize("length", [0, 1, 64, 66, 130])
def test_wrong_length_is_rejected(length: int) -> None:
    with pytest.raises(InvalidSignature, match="65 bytes"):
        recover_personal(b"m", b"\x01" * length)


@pytest.mark.parametrize("v", [2, 3, 26, 29, 30, 35, 36, 255])
def test_bad_v_is_rejected(v: int) -> None:
    signature = seeded_key(1).sign_personal(b"m")
    with pytest.raises(InvalidSignature, match="recovery id v"):
        recover_personal(b"m", with_v(signature, v))


def test_zero_s_is_rejected() -> None:
    signature = seeded_key(1).sign_personal(b"m")
    with pytest.raises(InvalidSignature, match="s is zero"):
        recover_personal(b"m", signature[:32] + bytes(32) + signature[64:])


@pytest.mark.parametrize("r", [0, N])
def test_r_out_of_range_is_rejected(r: int) -> None:
    signature = seeded_key(1).sign_personal(b"m")
    bad = r.to_bytes(32, "big") + signature[32:]
    with pytest.raises(InvalidSignature):
        recover_personal(b"m", bad)


# ------------------------------------------------------------------------ py-ecc cross-check


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_public_key_matches_py_ecc(seed: int) -> None:
    key = seeded_key(seed)
    x, y = ecc.privtopub(key.secret)
    uncompressed = key.public_key.format(compressed=False)
    assert uncompressed == b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


@pytest.mark.parametrize(("seed", "message"), [(0, b"first"), (1, b""), (2, "✓".encode())])
def test_py_ecc_recovers_our_signature(seed: int, message: bytes) -> None:
    key = seeded_key(seed)
    digest = eip191_hash(message)
    signature = key.sign_digest(digest)
    vrs = (
        signature[64],
        int.from_bytes(signature[:32], "big"),
        int.from_bytes(signature[32:64], "big"),
    )
    assert ecc.ecdsa_raw_recover(digest, vrs) == ecc.privtopub(key.secret)
    assert recover_address(digest, signature) == key.address


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_we_recover_py_ecc_signatures(seed: int) -> None:
    key = seeded_key(seed)
    digest = eip191_hash(b"signed by py-ecc")
    v, r, s = ecc.ecdsa_raw_sign(digest, key.secret)
    if s > N // 2:  # py-ecc does not normalise s; do what every wallet does
        s, v = N - s, 55 - v
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((v,))
    assert recover_address(digest, signature) == key.address
    assert signature == key.sign_digest(digest)  # both are RFC 6979 deterministic


def test_repr_hides_the_secret() -> None:
    key = seeded_key(0)
    assert key.secret.hex() not in repr(key)
    assert key.secret.hex() not in str(key)
    assert key.address in repr(key)
