"""Signed-request authentication for the gateway. Pure: no I/O, ``now_s`` is passed in.

Theory of operation
-------------------
Every request that changes or reads private state carries a signature of one ASCII line, the
*canonical message*::

    formation:v1:<METHOD>:<path with query>:<sha256 hex of the body>:<unix seconds>:<nonce>

A delegated key acting for an account signs ``formation:v2:`` with the same fields and then
``:<0x account>``; ``SignedRequest.act_as`` is that account. The ``X-Act-As`` header, if sent,
must say the same, and without a v2 line it is refused: a header outside the signature could be
added or altered by anyone on the way.

The signer is whoever's key recovers from the signature; there are no accounts, passwords or
sessions. The line binds the signature to this request (method, path, body), to a moment
(the timestamp must be within ``window_s`` of the node's clock) and to one use (the nonce may
not repeat for a signer while its timestamp is inside the window), so a captured request can
be neither altered nor replayed. The upstream checked none of this (``shared/reference/
formation.md`` §2.1): one captured header authenticated any request forever.

Two carriers are accepted:

* ``X-Message`` (the line verbatim) and ``X-Signature`` (``0x`` + hex of the 65-byte EIP-191
  ``personal_sign`` signature r‖s‖v, v 27/28 or 0/1) — what ``eth_account``'s
  ``sign_message(encode_defunct(text=line))``, ethers' ``signMessage(line)`` or any wallet
  produce. A 64-byte signature with the ``X-Recovery-Id`` header (0/1) is accepted too.
* ``Authorization: Signature <sig hex>.<recovery id>.<hex of the line>``, the upstream's carrier,
  whose digest is ``SHA256(SHA256(line))`` (k256's ``sign_recoverable`` hashes the SHA-256 it
  is given once more) and no EIP-191 prefix, for upstream clients.

``verify`` raises ``AuthError`` with a stable ``code`` and a message that says what to fix;
the gateway turns it into ``401`` with that JSON and applies nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from node.ledger.request_op import (
    ParsedLine,
    RequestRejected,
    canonical_message,
    parse_line,
    recover_line_signer,
)

__all__ = [
    "WINDOW_S_DEFAULT",
    "AuthError",
    "NonceCache",
    "SignedRequest",
    "authenticate",
    "canonical_message",
    "verify",
]

# Five minutes: wide enough for a laptop whose clock is a little off, narrow enough that the
# nonce cache only has to remember five minutes of requests.
WINDOW_S_DEFAULT: Final = 300


class AuthError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _parse(line: str) -> ParsedLine:
    try:
        return parse_line(line)
    except RequestRejected as exc:
        raise AuthError(exc.code, str(exc)) from None


class NonceCache:
    """Nonces seen per signer while their timestamps are inside the window. Bounded."""

    def __init__(self, window_s: int = WINDOW_S_DEFAULT, entries_max: int = 1_000_000) -> None:
        self.window_s = window_s
        self.entries_max = entries_max
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()  # in arrival order

    def use(self, signer: str, nonce: str, timestamp_s: int, now_s: int) -> None:
        # Requests stamped outside the window are refused before this, so an entry older than
        # 2 windows can never match again: forget it.
        horizon = now_s - 2 * self.window_s
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[key]
        key = (signer, nonce)
        if key in self._seen:
            raise AuthError(
                "replayed",
                "this nonce was already used by this signer: sign the request again with a new nonce",
            )
        if len(self._seen) >= self.entries_max:
            raise AuthError(
                "busy", "too many recent requests to check for replays; retry in a few seconds"
            )
        self._seen[key] = now_s


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _hex(text: str, what: str) -> bytes:
    body = text[2:] if text[:2].lower() == "0x" else text
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise AuthError("malformed_signature", f"{what} is not hex") from None


def _recover(headers: Mapping[str, str]) -> tuple[str, str, bytes, str]:
    """(signed line, signer, 65-byte signature, scheme) from the request's carrier."""
    line, signature, scheme = _carrier(headers)
    if not line.isascii():
        raise AuthError("malformed_message", "the signed message must be ASCII")
    try:
        # The rule replicas use on request ops, and its memo: verifying the request op made of
        # this request then costs no second recovery.
        return line, recover_line_signer(line, signature, scheme), signature, scheme
    except RequestRejected as exc:
        raise AuthError(exc.code, str(exc.args[0])) from None


def _carrier(headers: Mapping[str, str]) -> tuple[str, bytes, str]:
    """(signed line, 65-byte signature with v as 27/28, scheme) as the request carries them."""
    authorization = _header(headers, "Authorization")
    message = _header(headers, "X-Message")
    if authorization is not None and authorization.startswith("Signature "):
        parts = authorization[len("Signature ") :].strip().split(".")
        if len(parts) != 3:
            raise AuthError(
                "malformed_signature",
                "Authorization must be 'Signature <sig hex>.<recovery id>.<message hex>'",
            )
        signature = _hex(parts[0], "the signature")
        if len(signature) != 64 or parts[1] not in ("0", "1"):
            raise AuthError(
                "malformed_signature",
                "the upstream carrier needs a 64-byte r||s signature and recovery id 0 or 1",
            )
        line_bytes = _hex(parts[2], "the message")
        try:
            line = line_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise AuthError("malformed_message", "the signed message must be ASCII") from None
        return line, signature + bytes((27 + int(parts[1]),)), "sha256d"
    if message is None:
        raise AuthError(
            "missing_signature",
            "sign the request: send X-Message (the canonical line) and X-Signature (EIP-191 personal_sign of it); see docs/api.md",
        )
    signature_text = _header(headers, "X-Signature")
    if signature_text is None:
        raise AuthError("missing_signature", "X-Message is present but X-Signature is missing")
    signature = _hex(signature_text.strip(), "X-Signature")
    if len(signature) == 64:
        recovery = _header(headers, "X-Recovery-Id")
        if recovery is None or recovery.strip() not in ("0", "1", "27", "28"):
            raise AuthError(
                "malformed_signature", "a 64-byte X-Signature needs X-Recovery-Id (0 or 1)"
            )
        signature += bytes((int(recovery.strip()),))
    if len(signature) != 65:
        raise AuthError(
            "malformed_signature", f"X-Signature must be 65 bytes (r||s||v), got {len(signature)}"
        )
    if signature[64] in (0, 1):
        signature = signature[:64] + bytes((signature[64] + 27,))
    return message, signature, "personal"


@dataclass(frozen=True)
class SignedRequest:
    """An authenticated request: who signed it, and what a request op needs to carry it."""

    signer: str
    line: str
    signature: bytes  # 65 bytes, v as 27/28
    scheme: str  # "personal" (EIP-191) or "sha256d" (the upstream carrier)
    timestamp_s: int
    nonce: str
    act_as: str | None = None  # the account a delegated key's v2 line acts for


def authenticate(
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now_s: int,
    nonces: NonceCache,
) -> SignedRequest:
    """The verified signature of a request, else ``AuthError``.

    ``path`` is the request target as received, query string included.
    """
    line, signer, signature, scheme = _recover(headers)
    parsed = _parse(line)
    if parsed.method != method.upper():
        raise AuthError(
            "message_mismatch",
            f"the signature is for {parsed.method}, the request is {method.upper()}",
        )
    if parsed.path != path:
        raise AuthError(
            "message_mismatch",
            f"the signature is for path {parsed.path!r}, the request is for {path!r}",
        )
    if parsed.body_sha256 != hashlib.sha256(body).hexdigest():
        raise AuthError(
            "message_mismatch", "the signature's body hash does not match the body sent"
        )
    if abs(now_s - parsed.timestamp_s) > nonces.window_s:
        raise AuthError(
            "stale",
            f"the signed timestamp is {now_s - parsed.timestamp_s:+d} s from the node's clock; the window is ±{nonces.window_s} s (check your clock and sign again)",
        )
    nonces.use(signer, parsed.nonce, parsed.timestamp_s, now_s)
    return SignedRequest(
        signer, line, signature, scheme, parsed.timestamp_s, parsed.nonce, parsed.act_as
    )


def verify(
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now_s: int,
    nonces: NonceCache,
) -> str:
    """The signer's address if the request is properly signed, else ``AuthError``."""
    return authenticate(method, path, body, headers, now_s, nonces).signer
