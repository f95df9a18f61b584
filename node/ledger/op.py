"""The signed operation: the only way replicated state ever changes.

Theory of operation
-------------------
An op is two byte strings: ``body``, the canonical JSON of what the author wants, and ``sig``,
the author's 65-byte EIP-191 ``personal_sign`` signature of exactly those bytes. Nothing else
travels or is stored; every other property (id, author, clock, kind, payload) is read back out
of ``body``, so a replica never trusts a field a peer could have changed in transit.

The body is a JSON object with exactly these keys::

    {"author": "0x<40 lower-case hex>",     # the signer; must equal the recovered address
     "hlc": [wall_ms, logical],             # the author's hybrid logical clock at signing
     "kind": "instance.stop",               # what to do (see node/ledger/state.py)
     "net": "local",                        # network id: an op signed for devnet is void elsewhere
     "payload": {...},                      # kind-specific, validated by the state
     "v": 1}                                # envelope version

*Canonical* means ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8, with integers only (no floats: their text form is not portable) and no
duplicate keys (the rules and their reasons: ``node.ledger.canonical``). A body that does not
round-trip to itself byte for byte is refused, so one content has one encoding and therefore
one id.

The op **id** is the digest the author signed: ``keccak256("\\x19Ethereum Signed Message:\\n"
+ len(body) + body)``. It is the op's idempotency key: applying an id twice is a no-op, and the
billing ledger of a later issue uses ids as transfer ids.

Verification (``decode_op``) is stateless: whether an op is well formed, correctly signed and
authorized depends on the op alone, never on what a replica has seen before, so every replica
reaches the same verdict with the same reason. It is also the expensive step (one ECDSA
recovery, ~45 µs here), done once at the edge (gateway or gossip ingress); ops read back from
our own store are rebuilt with ``Op.trusted`` and skip it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from node.identity.keys import (
    SIGNATURE_BYTES,
    InvalidSignature,
    NodeKey,
    eip191_hash,
    recover_address,
)
from node.ledger.canonical import (
    DEPTH_MAX,
    ENVELOPE_VERSION,
    REQUEST_ENVELOPE_VERSION,
    OpRejected,
    canonical_json,
    check_hlc,
    nesting_too_deep,
    reject_float,
    require_canonical,
)
from node.ledger.request_op import check_delegation, read_fields, recover_line_signer

__all__ = [
    "ENVELOPE_VERSION",
    "OP_BODY_BYTES_MAX",
    "REQUEST_ENVELOPE_VERSION",
    "Op",
    "OpRejected",
    "Stamp",
    "canonical_json",
    "check_hlc",
    "decode_op",
    "sign_op",
]

# An op is a small intent (a Formfile is the largest thing one carries); images and blobs travel
# by digest, never inside ops. 256 KiB bounds what a hostile peer can make us parse and store.
OP_BODY_BYTES_MAX: Final = 256 * 1024
_BODY_KEYS: Final = frozenset({"author", "hlc", "kind", "net", "payload", "v"})

# Total order used by every last-writer-wins decision: HLC first, then author, then op id.
# (wall_ms, logical, author, op_id)
Stamp = tuple[int, int, str, bytes]


@dataclass(frozen=True, slots=True)
class Op:
    """A verified (or self-made, or read back from our own store) signed operation."""

    id: bytes
    body: bytes
    sig: bytes
    author: str
    wall_ms: int
    logical: int
    kind: str
    net: str
    payload: dict[str, Any]
    # The delegate key that signed a request op acting for ``author`` (None: the author signed).
    via: str | None = None

    @property
    def stamp(self) -> Stamp:
        return (self.wall_ms, self.logical, self.author, self.id)

    @classmethod
    def trusted(cls, body: bytes, sig: bytes) -> Op:
        """Rebuild an op this node verified before (e.g. from its own store): no ECDSA."""
        fields = json.loads(body)
        if fields.get("v") == REQUEST_ENVELOPE_VERSION:
            return _request_op(body, sig, fields, verify_net=None)
        return cls._from_fields(eip191_hash(body), body, sig, fields)

    @classmethod
    def _from_fields(cls, op_id: bytes, body: bytes, sig: bytes, fields: dict[str, Any]) -> Op:
        wall_ms, logical = fields["hlc"]
        return cls(
            id=op_id,
            body=body,
            sig=sig,
            author=fields["author"],
            wall_ms=wall_ms,
            logical=logical,
            kind=fields["kind"],
            net=fields["net"],
            payload=fields["payload"],
        )

    def __repr__(self) -> str:
        return (
            f"Op({self.kind} by {self.author[:10]}… at {self.wall_ms}.{self.logical},"
            f" id={self.id.hex()[:12]}…)"
        )


def sign_op(key: NodeKey, net: str, hlc: tuple[int, int], kind: str, payload: dict[str, Any]) -> Op:
    """Build and sign an op as ``key``. The caller's HLC supplies ``hlc``."""
    fields = {
        "author": key.address,
        "hlc": [hlc[0], hlc[1]],
        "kind": kind,
        "net": net,
        "payload": payload,
        "v": ENVELOPE_VERSION,
    }
    body = canonical_json(fields)
    if len(body) > OP_BODY_BYTES_MAX:
        raise OpRejected(
            "too_large", f"op body is {len(body)} bytes; the limit is {OP_BODY_BYTES_MAX}"
        )
    op_id = eip191_hash(body)
    return Op._from_fields(op_id, body, key.sign_digest(op_id), fields)


def decode_op(body: bytes, sig: bytes, net: str) -> Op:
    """Verify an op from outside (a peer, a client) and return it, or raise ``OpRejected``.

    Checks, in order: size, JSON, canonical form, envelope shape, network, signature and that
    the signer is the stated author. Kind and payload are checked by the state
    (``node.ledger.state.check_op``), which is just as stateless.
    """
    if len(body) > OP_BODY_BYTES_MAX:
        raise OpRejected(
            "too_large", f"op body is {len(body)} bytes; the limit is {OP_BODY_BYTES_MAX}"
        )
    if len(sig) != SIGNATURE_BYTES:
        raise OpRejected("bad_signature", f"a signature is 65 bytes, got {len(sig)}")
    if nesting_too_deep(body):
        raise OpRejected("malformed", f"op body nests deeper than {DEPTH_MAX} levels")
    try:
        # No per-value Python walk here (it would cost as much as the JSON parse): floats are
        # caught by the hook, duplicate keys and any other non-canonical spelling by the
        # round-trip comparison below, integer ranges by the payload schemas.
        fields = json.loads(body, parse_float=reject_float)
    except OpRejected:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise OpRejected("malformed", f"op body is not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise OpRejected("malformed", "op body must be a JSON object")
    if fields.get("v") == REQUEST_ENVELOPE_VERSION:
        require_canonical(fields, body)
        return _request_op(body, sig, fields, verify_net=net)
    if fields.keys() != _BODY_KEYS:
        missing = sorted(_BODY_KEYS - fields.keys())
        extra = sorted(fields.keys() - _BODY_KEYS)
        raise OpRejected(
            "malformed", f"op body keys are wrong (missing {missing}, unexpected {extra})"
        )
    if fields["v"] != ENVELOPE_VERSION:
        raise OpRejected(
            "unsupported_version",
            f"op envelope version {fields['v']!r}; this node speaks {ENVELOPE_VERSION} and {REQUEST_ENVELOPE_VERSION}",
        )
    require_canonical(fields, body)
    check_hlc(fields["hlc"])
    author, kind, op_net = fields["author"], fields["kind"], fields["net"]
    if not (isinstance(author, str) and isinstance(kind, str) and isinstance(op_net, str)):
        raise OpRejected("malformed", "author, kind and net must be strings")
    if not isinstance(fields["payload"], dict):
        raise OpRejected("malformed", "payload must be a JSON object")
    if op_net != net:
        raise OpRejected("wrong_network", f"op was signed for network {op_net!r}; this is {net!r}")
    op_id = eip191_hash(body)
    try:
        signer = recover_address(op_id, sig)
    except InvalidSignature as exc:
        raise OpRejected("bad_signature", str(exc)) from None
    if signer != author:
        raise OpRejected(
            "bad_signature", f"signed by {signer}, but the op says its author is {author!r}"
        )
    return Op._from_fields(op_id, body, sig, fields)


def _request_op(body: bytes, sig: bytes, fields: dict[str, Any], verify_net: str | None) -> Op:
    """A ``v: 2`` request op (``node.ledger.request_op``); ``verify_net=None`` trusts it."""
    request = read_fields(fields)
    if verify_net is not None:
        if fields["net"] != verify_net:
            raise OpRejected(
                "wrong_network",
                f"op was signed for network {fields['net']!r}; this is {verify_net!r}",
            )
        signer = recover_line_signer(request.line, sig, request.scheme)
        if request.grant is None:
            if signer != request.author:
                raise OpRejected(
                    "bad_signature",
                    f"signed by {signer}, but the op says its author is {request.author!r}",
                )
        else:
            grant = decode_op(request.grant[0], request.grant[1], verify_net)
            check_delegation(request.kind, signer, request.author, request.timestamp_s, grant)
    via = None
    if request.grant is not None:
        via = Op.trusted(*request.grant).payload["delegate"] if verify_net is None else signer
    return Op(
        id=eip191_hash(body),
        body=body,
        sig=sig,
        author=request.author,
        wall_ms=request.hlc[0],
        logical=request.hlc[1],
        kind=request.kind,
        net=fields["net"],
        payload=request.payload,
        via=via,
    )
