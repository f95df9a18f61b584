"""Signing a gateway request. Pure: the time and the nonce are arguments.

Theory of operation
-------------------
The gateway authenticates a request by the key that signed one line describing it
(``node.ledger.request_op.canonical_message``)::

    formation:v1:<METHOD>:<path with query>:<sha256 hex of the body>:<unix seconds>:<nonce>

(``formation:v2:`` and ``:<0x account>`` at the end for a delegated key acting for an account),
so the client's whole job is to build that line from exactly what it will send and attach it
with its EIP-191 ``personal_sign`` signature: ``X-Message`` (the line) and ``X-Signature``
(``0x`` + hex of r‖s‖v, 65 bytes, v 27/28), the carrier any wallet can produce too.

The caller must pass the request target *as it goes on the wire* (percent-encoding and query
included) and the body bytes *as sent*: the gateway hashes what it receives, and a body that is
re-serialised after signing no longer matches. ``node.client.api`` builds the request first and
signs its final target and content for that reason.

The nonce makes each signed request single-use; the gateway remembers nonces for its time
window (five minutes). 16 URL-safe characters (``secrets.token_urlsafe(12)``, 96 bits) make a
collision between two of one signer's requests in that window negligible.
"""

from __future__ import annotations

import re
from typing import Final

from node.identity.keys import NodeKey
from node.ledger.request_op import canonical_message

__all__ = ["NONCE_CHARS_MAX", "NONCE_CHARS_MIN", "sign_request"]

# The gateway accepts 8..64 characters; we ask for 16 so a nonce carries at least 96 bits.
NONCE_CHARS_MIN: Final = 16
NONCE_CHARS_MAX: Final = 64
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]+")


def sign_request(
    key: NodeKey,
    method: str,
    path_with_query: str,
    body: bytes,
    now_s: int,
    nonce: str,
    act_as: str | None = None,
) -> dict[str, str]:
    """The ``X-Message`` and ``X-Signature`` headers that authenticate this request as ``key``.

    ``act_as`` (a normalized address) signs the ``formation:v2`` line of a delegated key acting
    for that account: the account is inside the signature, not only in ``X-Act-As``.

    Raises ``ValueError`` for a nonce or path the gateway would refuse, so a mistake shows up
    here rather than as a ``malformed_message`` from the server.
    """
    if not NONCE_CHARS_MIN <= len(nonce) <= NONCE_CHARS_MAX or not _NONCE.fullmatch(nonce):
        raise ValueError(
            f"a nonce must be {NONCE_CHARS_MIN}-{NONCE_CHARS_MAX} characters of A-Z a-z 0-9 _ -, "
            f"got {nonce!r}; use secrets.token_urlsafe(12)"
        )
    if not path_with_query.startswith("/") or not path_with_query.isascii():
        raise ValueError(
            f"the signed path must be the ASCII request target starting with '/', got "
            f"{path_with_query!r}; percent-encode it first"
        )
    line = canonical_message(method, path_with_query, body, now_s, nonce, act_as)
    signature = key.sign_personal(line.encode("ascii"))
    return {"X-Message": line, "X-Signature": "0x" + signature.hex()}
