"""secp256k1 keys, Ethereum addresses and EIP-191 ``personal_sign`` signatures.

Theory of operation
-------------------
A node, a user and an API key are all the same thing to the fog: a secp256k1 key pair whose
*address* is the last 20 bytes of keccak-256 over the 64-byte uncompressed public key (the
Ethereum convention, so any wallet can be a Formation identity).

Signatures are recoverable (r ‖ s ‖ v, 65 bytes): the verifier learns the signer's address from
the signature itself, so an op or a request need not carry a public key. We sign with EIP-191
``personal_sign`` (``keccak256("\\x19Ethereum Signed Message:\\n" + len(msg) + msg)``) because
that is what every wallet (MetaMask, ``ethers.Wallet.signMessage``, ``eth_account``) produces;
a user's browser can sign exactly the bytes a replica verifies.

``v`` is emitted as 27/28 (the wallet convention) and accepted as 0/1 or 27/28. Signatures
with a high ``s`` are refused: libsecp256k1 signs low-s (RFC 6979), and accepting both halves
would give every signature a second, different-looking twin.

Everything here is pure: no I/O, no clock, no global RNG (``NodeKey.generate`` takes the
secret's source explicitly).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable

import coincurve
from Crypto.Hash import keccak

__all__ = [
    "SIGNATURE_BYTES",
    "InvalidSignature",
    "NodeKey",
    "address_from_public_key",
    "checksum_address",
    "eip191_hash",
    "keccak256",
    "normalize_address",
    "recover_address",
    "recover_personal",
]

SIGNATURE_BYTES = 65
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n"


class InvalidSignature(ValueError):
    """A signature is malformed or does not recover to a public key."""


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (the pre-standard SHA-3 that Ethereum uses), 32 bytes."""
    return keccak.new(data=data, digest_bits=256).digest()


def eip191_hash(message: bytes) -> bytes:
    """The digest ``personal_sign`` signs: keccak256 of the EIP-191 version-0x45 envelope."""
    return keccak256(_EIP191_PREFIX + str(len(message)).encode("ascii") + message)


@functools.lru_cache(maxsize=65536)
def _address_of_point(uncompressed: bytes) -> str:
    # Cached because one author signs many ops: recovering the point is unavoidable, but the
    # keccak that turns it into an address need not be repeated for a key we have seen.
    return "0x" + keccak256(uncompressed[1:])[-20:].hex()


def address_from_public_key(public_key: coincurve.PublicKey) -> str:
    """Lower-case ``0x``-prefixed address of a public key."""
    return _address_of_point(public_key.format(compressed=False))


def normalize_address(text: str) -> str:
    """Canonical form of an address: lower-case hex with ``0x``.

    Accepts an optional ``0x`` and any case (the upstream writes addresses without ``0x``).
    Raises ``ValueError`` naming the problem otherwise.
    """
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if len(body) != 40:
        raise ValueError(
            f"an address is 20 bytes (40 hex digits), got {len(body)} digits: {text!r}"
        )
    if body.strip("0123456789abcdefABCDEF"):
        raise ValueError(f"an address is hex digits only, got {text!r}")
    return "0x" + body.lower()


def checksum_address(address: str) -> str:
    """EIP-55 mixed-case checksum form, as wallets display it."""
    body = normalize_address(address)[2:]
    digest = keccak256(body.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if c.isalpha() and int(digest[i], 16) >= 8 else c for i, c in enumerate(body)
    )


def _normalized_signature(signature: bytes) -> bytes:
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidSignature(f"a signature is 65 bytes (r ‖ s ‖ v), got {len(signature)}")
    v = signature[64]
    if v in (27, 28):
        v -= 27
    if v not in (0, 1):
        raise InvalidSignature(
            f"signature recovery id v must be 0, 1, 27 or 28, got {signature[64]}"
        )
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < s <= _HALF_N:
        raise InvalidSignature(
            "signature s is zero or in the upper half of the curve order (malleable)"
        )
    return signature[:64] + bytes((v,))


def recover_address(digest: bytes, signature: bytes) -> str:
    """Address of the key that signed the 32-byte ``digest`` (no further hashing)."""
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            _normalized_signature(signature), digest, hasher=None
        )
    except InvalidSignature:
        raise
    except Exception as exc:  # coincurve raises plain Exception on a point that does not recover
        raise InvalidSignature(f"signature does not recover a public key: {exc}") from None
    return address_from_public_key(public_key)


def recover_personal(message: bytes, signature: bytes) -> str:
    """Address that ``personal_sign``-ed ``message`` (what ``eth_account.recover_message`` does)."""
    return recover_address(eip191_hash(message), signature)


class NodeKey:
    """A secp256k1 private key with its Ethereum address.

    The secret never appears in ``repr`` or ``str``.
    """

    __slots__ = ("_key", "address", "public_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError(f"a secp256k1 secret is 32 bytes, got {len(secret)}")
        n = int.from_bytes(secret, "big")
        if not 0 < n < _SECP256K1_N:
            raise ValueError("the secret is not a valid secp256k1 scalar (zero or >= curve order)")
        self._key = coincurve.PrivateKey(secret)
        self.public_key: coincurve.PublicKey = self._key.public_key
        self.address: str = address_from_public_key(self.public_key)

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes] = secrets.token_bytes) -> NodeKey:
        """A fresh key; ``randbytes`` is the entropy source (inject a seeded one in tests)."""
        while True:
            try:
                return cls(randbytes(32))
            except ValueError:  # probability ~2^-128; draw again
                continue

    @property
    def secret(self) -> bytes:
        """The 32-byte secret. Handle with care: only the keystore should read it."""
        return bytes(self._key.secret)

    def sign_digest(self, digest: bytes) -> bytes:
        """Recoverable signature of a 32-byte digest, v as 27/28."""
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes((sig[64] + 27,))

    def sign_personal(self, message: bytes) -> bytes:
        """EIP-191 ``personal_sign`` of ``message``; equals ``eth_account``'s ``sign_message``."""
        return self.sign_digest(eip191_hash(message))

    def __repr__(self) -> str:
        return f"NodeKey(address={self.address})"
