"""Request ops: a user's signed HTTP request, replicated as the op itself. Pure.

Theory of operation
-------------------
A wallet signs one line per gateway request (``canonical_message``)::

    formation:v1:<METHOD>:<path with query>:<sha256 hex of the body>:<unix seconds>:<nonce>

and a delegated key, acting for another account, signs that account too (``formation:v2``, the
same fields and then ``:<0x account>``), so nobody on the way can add or change whom it acts for.

If the gateway turned such a request into an op signed by the *node*, no other replica could
tell whether the user really asked for it. So the request itself travels: a *request op*
(envelope ``v: 2``) carries the method, path, body text, timestamp and nonce, from which any
replica rebuilds the signed line, recovers the signer and derives the change with the pure
function ``mutation_of``. Every replica therefore verifies the user's own signature, and a
gateway can neither forge nor alter a user's write.

The body is canonical JSON (as for ``v: 1`` ops, see ``node.ledger.op``)::

    {"author": "0x…",            # the account acted for: the signer, or the grant's author
     "grant": null | {"body": "<text of a key.grant op>", "sig": "0x<65 bytes>"},
     "hint": {"name": "…", "tags": […]},   # unsigned, and only used where it is verified
     "hlc": [t * 1000, logical],            # logical from the gateway (see Clock)
     "net": "local",
     "req": {"body": "<request body text>", "method": "POST", "nonce": "…",
             "path": "/v1/instance/…/stop", "t": 1764000000},
     "scheme": "personal" | "sha256d",     # EIP-191 personal_sign, or the upstream's
     "v": 2}                                # SHA256(SHA256(line)) carrier

``sig`` is the 65-byte signature of the line (v as 27/28). The op id is ``eip191_hash(body)``
like every op's, so it is unique per envelope; applying it twice is a no-op.

**Hints.** ``POST /instance/<id>/stop`` names an instance by id, but the state authorizes by
recomputing ``id = f(author, name)`` (``node.ledger.state`` rule 2). The gateway adds the name
as an unsigned hint; a wrong hint cannot change the id the user signed, so it can only make
the op fail authorization, never reach somebody else's entity. ``tags`` (which allow-list
entries a ``disallow`` removes) are what the gateway observed, as in any observed-remove set.

**Delegated keys.** A request signed by a key that an account granted (``key.grant``) carries
that grant op, and its signed line is the v2 line naming the account (replicas rebuild it from
``author``). It acts for the grant's author if the grant names the signer, covers the op's
scope (``SCOPE_OF_KIND``), was not expired at the request's timestamp and is not itself
delegated. A replica checks all of that from the op alone. Revocation is enforced where
requests enter (the gateway refuses keys whose revocation it has seen); a revoked key can
therefore still act through a gateway that has not yet heard of the revocation, for about one
gossip round. Keys cannot grant keys.

**Clock.** The op's HLC is ``(t * 1000, logical)``: the wall time is the *signed* second, so
a request replayed later, even through another gateway whose nonce cache never saw it, sorts
before every write the user signed after it and cannot undo them. Whole seconds cannot order
"grant, then revoke" sent within one second, so the gateway adds ``logical``, unsigned, from
its own counter: requests through one gateway keep their arrival order. A replayed request can
thus only be reordered among the same user's writes of the same second.

The meaning of ``v: 2`` is frozen: a change to ``mutation_of`` that alters the op an existing
request derives needs a new envelope version, or replicas running different code diverge.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from node.identity.keys import InvalidSignature, NodeKey, eip191_hash, recover_address
from node.ledger.canonical import (
    REQUEST_ENVELOPE_VERSION,
    OpRejected,
    canonical_json,
    check_hlc,
    nesting_too_deep,
    reject_float,
)

__all__ = [
    "DELEGABLE_SCOPES",
    "REQUEST_ENVELOPE_VERSION",
    "SCHEMES",
    "SCOPE_OF_KIND",
    "ParsedLine",
    "canonical_message",
    "line_digest",
    "mutation_of",
    "parse_line",
    "request_op_body",
    "route_of",
]

SCHEMES: Final = ("personal", "sha256d")
LINE_PREFIX: Final = "formation:v1:"
# A delegated key's line: v1's fields and then the account it acts for, so the account is
# signed too (an X-Act-As header alone could be added or altered by anyone on the path).
LINE_PREFIX_ACTING: Final = "formation:v2:"
_ADDRESS: Final = re.compile(r"0x[0-9a-f]{40}")
LINE_CHARS_MAX: Final = 4096
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")
_METHOD: Final = re.compile(r"[A-Z]{3,7}")
_HEX_ID: Final = r"[0-9a-f]{40,64}"
_BODY_KEYS: Final = frozenset({"author", "grant", "hint", "hlc", "net", "req", "scheme", "v"})
LOGICAL_MAX: Final = 2**32 - 1
_REQ_KEYS: Final = frozenset({"body", "method", "nonce", "path", "t"})
_HINT_KEYS: Final = frozenset({"name", "tags"})

# What a delegated key may be allowed to do; "read" and "hire" are checked by the gateway only
# (they change no state), the others name op kinds by their prefix.
DELEGABLE_SCOPES: Final = ("account", "instance", "agent", "model", "read", "hire")
SCOPE_OF_KIND: Final = {
    "account": "account",
    "instance": "instance",
    "agent": "agent",
    "model": "model",
    # Building an image is the first half of deploying one: the instance scope covers both.
    "build": "instance",
    # A vanity name points at a build: part of deploying it.
    "dns": "instance",
}


class RequestRejected(OpRejected):
    """A request cannot become an op. ``code`` is stable; ``field`` names the culprit if any."""


# -- the signed line ------------------------------------------------------------------------


def canonical_message(
    method: str,
    path: str,
    body: bytes,
    timestamp_s: int,
    nonce: str,
    act_as: str | None = None,
) -> str:
    """The line a client signs for a request (the same function the ``form`` client uses).

    ``act_as`` (a lower-case ``0x`` address) makes it the ``formation:v2`` line of a delegated
    key acting for that account; without it the line is ``formation:v1``.
    """
    fields = f"{method.upper()}:{path}:{hashlib.sha256(body).hexdigest()}:{timestamp_s}:{nonce}"
    if act_as is None:
        return LINE_PREFIX + fields
    return f"{LINE_PREFIX_ACTING}{fields}:{act_as}"


@dataclass(frozen=True)
class ParsedLine:
    method: str
    path: str
    body_sha256: str
    timestamp_s: int
    nonce: str
    act_as: str | None = None  # the account a v2 line acts for


def parse_line(line: str) -> ParsedLine:
    """The parts of a signed line, or ``RequestRejected('malformed_message')``."""
    if len(line) > LINE_CHARS_MAX or not line.isascii() or "\n" in line:
        raise RequestRejected(
            "malformed_message",
            f"the signed message must be one ASCII line of at most {LINE_CHARS_MAX} characters",
        )
    act_as: str | None = None
    if line.startswith(LINE_PREFIX_ACTING):
        line, _, act_as = line.rpartition(":")
        if not _ADDRESS.fullmatch(act_as):
            raise RequestRejected(
                "malformed_message",
                "a formation:v2 line ends with the account it acts for: ':0x' and 40 lower-case "
                "hex digits",
            )
        line = LINE_PREFIX + line[len(LINE_PREFIX_ACTING) :]
    elif not line.startswith(LINE_PREFIX):
        raise RequestRejected(
            "malformed_message",
            f"the signed message must start with {LINE_PREFIX!r} (or {LINE_PREFIX_ACTING!r} "
            "for a delegated key)",
        )
    head, _, nonce = line.rpartition(":")
    head, _, timestamp = head.rpartition(":")
    head, _, body_sha256 = head.rpartition(":")
    method, sep, path = head[len(LINE_PREFIX) :].partition(":")
    if not sep or not _METHOD.fullmatch(method):
        raise RequestRejected(
            "malformed_message",
            "the signed message has no upper-case HTTP method after 'formation:v1:'",
        )
    if not path.startswith("/"):
        raise RequestRejected("malformed_message", "the signed message's path must start with '/'")
    if not re.fullmatch(r"[0-9a-f]{64}", body_sha256):
        raise RequestRejected(
            "malformed_message",
            "the body hash must be 64 lower-case hex digits (sha256 of the body)",
        )
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise RequestRejected(
            "malformed_message", "the timestamp must be unix seconds (digits only)"
        )
    if not _NONCE.fullmatch(nonce):
        raise RequestRejected(
            "malformed_message", "the nonce must be 8-64 characters of A-Z a-z 0-9 _ -"
        )
    return ParsedLine(method, path, body_sha256, int(timestamp), nonce, act_as)


def line_digest(line: str, scheme: str) -> bytes:
    """The 32 bytes a signer signed for ``line`` under ``scheme``."""
    data = line.encode("ascii")
    if scheme == "personal":
        return eip191_hash(data)
    if scheme == "sha256d":
        # k256's sign_recoverable hashes the SHA-256 digest the upstream hands it once more.
        return hashlib.sha256(hashlib.sha256(data).digest()).digest()
    raise RequestRejected("malformed", f"unknown signature scheme {scheme!r}; known: {SCHEMES}")


def sign_line(key: NodeKey, line: str, scheme: str = "personal") -> bytes:
    """A client's signature of ``line`` (tests and the ``form`` client)."""
    return key.sign_digest(line_digest(line, scheme))


# Lines up to this long have their signer memoized (``_memo_signer``): a canonical line is
# ~150 characters, and the bound caps the memo at ~5 MiB however long the lines sent.
MEMO_LINE_CHARS_MAX = 1024


def recover_line_signer(line: str, sig: bytes, scheme: str) -> str:
    """The address that signed ``line`` under ``scheme`` (``RequestRejected`` if none)."""
    try:
        if len(line) <= MEMO_LINE_CHARS_MAX:
            return _memo_signer(line, sig, scheme)
        return recover_address(line_digest(line, scheme), sig)
    except InvalidSignature as exc:
        raise RequestRejected("bad_signature", str(exc)) from None


@functools.lru_cache(maxsize=4096)
def _memo_signer(line: str, sig: bytes, scheme: str) -> str:
    # The gateway recovers a request's signer twice: when it authenticates the request and
    # when it verifies the request op made of it, exactly as every replica will (decode_op).
    # The signer is a pure function of (line, signature, scheme), all three in the key, so the
    # memo changes no verdict: any other line, signature or scheme is recovered afresh, and a
    # failure (an exception) is never memoized. It saves the second keccak + ECDSA recovery.
    return recover_address(line_digest(line, scheme), sig)


# -- from request to change -----------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One state-changing route: the op kind it makes and how its payload is built."""

    method: str
    pattern: re.Pattern[str]
    kind: str
    build: Callable[[str, dict[str, Any], dict[str, str], dict[str, Any]], dict[str, Any]]
    hints: tuple[str, ...] = ()  # hint fields the gateway must supply from its state


def _own_account(
    author: str, body: dict[str, Any], path: dict[str, str], hint: dict[str, Any]
) -> dict[str, Any]:
    return {**body, "address": author}


def _body_as_is(
    author: str, body: dict[str, Any], path: dict[str, str], hint: dict[str, Any]
) -> dict[str, Any]:
    return dict(body)


def _delete_by_name(
    author: str, body: dict[str, Any], path: dict[str, str], hint: dict[str, Any]
) -> dict[str, Any]:
    payload = dict(body)
    if hint.get("tags"):
        payload["tags"] = hint["tags"]
    return payload


def _by_path_id(extra: tuple[str, ...] = ()) -> Callable[..., dict[str, Any]]:
    def build(
        author: str, body: dict[str, Any], path: dict[str, str], hint: dict[str, Any]
    ) -> dict[str, Any]:
        unexpected = sorted(set(body) - set(extra))
        if unexpected:
            raise RequestRejected(
                "invalid_payload",
                f"this route takes no field {unexpected[0]!r}",
                field=unexpected[0],
            )
        if "name" not in hint:
            raise RequestRejected("malformed", "the gateway must supply the entity's name hint")
        payload = {"id": path["id"], "name": hint["name"], **body}
        if "tags" in extra:
            payload["tags"] = hint.get("tags", [])
        return payload

    return build


def _routes() -> list[Route]:
    def route(method: str, path: str, kind: str, build: Any, hints: tuple[str, ...] = ()) -> Route:
        pattern = re.compile(path.replace("{id}", f"(?P<id>{_HEX_ID})"))
        return Route(method, pattern, kind, build, hints)

    routes = [
        route("POST", "/account/create", "account.create", _own_account),
        route("POST", "/account/update", "account.update", _own_account),
        route("POST", "/account/delete", "account.delete", _own_account),
        route("POST", "/instance/create", "instance.create", _body_as_is),
        route("POST", "/builds/create", "build.request", _body_as_is),
        route("POST", "/key/grant", "key.grant", _body_as_is),
        route("POST", "/key/revoke", "key.revoke", _body_as_is),
        route("POST", "/dns/add", "dns.add", _body_as_is),
        route("POST", "/dns/remove", "dns.remove", _body_as_is),
        # Billing orders (``node.ledger.billing``): never applied as ops of their own, only
        # carried inside the chain op of the node the signed body names. No delegated key
        # signs one (no scope covers ``billing``).
        route("POST", "/billing/credits/mint", "billing.order.mint", _body_as_is),
        route("POST", "/billing/credits/transfer", "billing.order.transfer", _body_as_is),
    ]
    for verb in ("stop", "start", "reboot", "delete"):
        routes.append(
            route("POST", f"/instance/{{id}}/{verb}", f"instance.{verb}", _by_path_id(), ("name",))
        )
    for plural, noun in (("agents", "agent"), ("models", "model")):
        routes += [
            route("POST", f"/{plural}/create", f"{noun}.register", _body_as_is),
            route("POST", f"/{plural}/update", f"{noun}.update", _body_as_is),
            route("POST", f"/{plural}/delete", f"{noun}.delete", _delete_by_name, ("tags",)),
            route(
                "POST",
                f"/{plural}/{{id}}/allow",
                f"{noun}.allow",
                _by_path_id(("address",)),
                ("name",),
            ),
            route(
                "POST",
                f"/{plural}/{{id}}/disallow",
                f"{noun}.disallow",
                _by_path_id(("address", "tags")),
                ("name", "tags"),
            ),
        ]
    return routes


ROUTES: Final = _routes()


def route_path(path: str) -> str:
    """A request path as routes see it: without the optional ``/v1`` prefix."""
    return path[3:] if path == "/v1" or path.startswith("/v1/") else path


def route_of(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The state-changing route ``method path`` names, with its path parameters, or None."""
    target = route_path(path)
    for route in ROUTES:
        if route.method == method:
            match = route.pattern.fullmatch(target)
            if match:
                return route, match.groupdict()
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise RequestRejected(
            "invalid_json", f"the request body has key {twice!r} twice; send each key once"
        )
    return result


def _parse_body(text: str) -> dict[str, Any]:
    if text.strip() == "":
        return {}
    raw = text.encode()
    if nesting_too_deep(raw):
        raise RequestRejected("invalid_json", "the request body nests too deeply")
    try:
        value = json.loads(text, parse_float=reject_float, object_pairs_hook=_no_duplicates)
    except RequestRejected:
        raise
    except OpRejected as exc:
        raise RequestRejected("invalid_json", f"{exc.args[0]} (send integers)") from None
    except (ValueError, RecursionError) as exc:
        raise RequestRejected("invalid_json", f"the request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RequestRejected("invalid_json", "the request body must be a JSON object")
    return value


def mutation_of(
    method: str, path: str, body_text: str, author: str, hint: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The op kind and payload a signed request asks for. Pure; the meaning of ``v: 2``."""
    if "?" in path:
        raise RequestRejected("invalid_request", "state-changing requests take no query string")
    found = route_of(method, path)
    if found is None:
        raise RequestRejected("not_found", f"{method} {path} changes nothing here")
    route, params = found
    return route.kind, route.build(author, _parse_body(body_text), params, hint)


# -- the envelope ----------------------------------------------------------------------------


def request_op_body(
    *,
    net: str,
    author: str,
    method: str,
    path: str,
    body_text: str,
    timestamp_s: int,
    nonce: str,
    scheme: str = "personal",
    hint: dict[str, Any] | None = None,
    grant: tuple[bytes, bytes] | None = None,
    logical: int = 0,
) -> bytes:
    """The canonical body of a request op (the gateway's half; the signature is the client's)."""
    fields = {
        "author": author,
        "grant": None
        if grant is None
        else {"body": grant[0].decode(), "sig": "0x" + grant[1].hex()},
        "hint": hint or {},
        "hlc": [timestamp_s * 1000, logical],
        "net": net,
        "req": {
            "body": body_text,
            "method": method,
            "nonce": nonce,
            "path": path,
            "t": timestamp_s,
        },
        "scheme": scheme,
        "v": REQUEST_ENVELOPE_VERSION,
    }
    return canonical_json(fields)


@dataclass(frozen=True)
class RequestFields:
    """What a request-op body says, checked for shape (not yet for signatures)."""

    author: str
    line: str
    timestamp_s: int
    hlc: tuple[int, int]
    scheme: str
    kind: str
    payload: dict[str, Any]
    grant: tuple[bytes, bytes] | None


def read_fields(fields: dict[str, Any]) -> RequestFields:
    """Shape-check a parsed ``v: 2`` body and derive its kind and payload. No ECDSA."""
    if fields.keys() != _BODY_KEYS:
        missing = sorted(_BODY_KEYS - fields.keys())
        extra = sorted(fields.keys() - _BODY_KEYS)
        raise RequestRejected(
            "malformed", f"request op keys are wrong (missing {missing}, unexpected {extra})"
        )
    req, hint, grant = fields["req"], fields["hint"], fields["grant"]
    if not (isinstance(req, dict) and req.keys() == _REQ_KEYS):
        raise RequestRejected("malformed", f"req must hold exactly {sorted(_REQ_KEYS)}")
    if not (
        isinstance(req["body"], str)
        and isinstance(req["method"], str)
        and isinstance(req["path"], str)
        and isinstance(req["nonce"], str)
        and type(req["t"]) is int
        and 0 <= req["t"] < 10**12
    ):
        raise RequestRejected("malformed", "req fields have the wrong types")
    if not (isinstance(hint, dict) and hint.keys() <= _HINT_KEYS):
        raise RequestRejected("malformed", f"hint may hold only {sorted(_HINT_KEYS)}")
    if "name" in hint and not isinstance(hint["name"], str):
        raise RequestRejected("malformed", "hint.name must be a string")
    if "tags" in hint and not (
        isinstance(hint["tags"], list) and all(isinstance(t, str) for t in hint["tags"])
    ):
        raise RequestRejected("malformed", "hint.tags must be a list of strings")
    hlc = fields["hlc"]
    check_hlc(hlc)
    if hlc[0] != req["t"] * 1000 or hlc[1] > LOGICAL_MAX:
        raise RequestRejected(
            "malformed",
            f"hlc must be [t * 1000, logical ≤ {LOGICAL_MAX}] for the signed second t",
        )
    if fields["scheme"] not in SCHEMES:
        raise RequestRejected("malformed", f"scheme must be one of {SCHEMES}")
    if not isinstance(fields["author"], str):
        raise RequestRejected("malformed", "author must be a string")
    grant_wire: tuple[bytes, bytes] | None = None
    if grant is not None:
        if not (
            isinstance(grant, dict)
            and grant.keys() == {"body", "sig"}
            and isinstance(grant["body"], str)
            and isinstance(grant["sig"], str)
            and re.fullmatch(r"0x[0-9a-f]{130}", grant["sig"])
        ):
            raise RequestRejected("malformed", "grant must be {body: text, sig: 0x + 65 bytes hex}")
        grant_wire = (grant["body"].encode(), bytes.fromhex(grant["sig"][2:]))
    body_bytes = req["body"].encode()
    # A delegated request's line names the account it acts for (v2): rebuilt from the op's
    # author, so a signature over a line without it, or naming another account, recovers some
    # other address and fails the delegation check.
    act_as = fields["author"] if grant_wire is not None else None
    line = canonical_message(req["method"], req["path"], body_bytes, req["t"], req["nonce"], act_as)
    parse_line(line)  # the same rules as at the gateway: a replica must not accept more
    kind, payload = mutation_of(req["method"], req["path"], req["body"], fields["author"], hint)
    return RequestFields(
        author=fields["author"],
        line=line,
        timestamp_s=req["t"],
        hlc=(hlc[0], hlc[1]),
        scheme=fields["scheme"],
        kind=kind,
        payload=payload,
        grant=grant_wire,
    )


def check_delegation(kind: str, signer: str, author: str, timestamp_s: int, grant: Any) -> None:
    """Raise unless ``grant`` (a verified key.grant ``Op``) lets ``signer`` do ``kind`` for
    ``author`` at ``timestamp_s``."""
    scope = SCOPE_OF_KIND.get(kind.partition(".")[0])
    if grant.kind != "key.grant" or grant.via is not None:
        raise RequestRejected(
            "unauthorized", "a delegated request must carry a key.grant signed by the account"
        )
    if grant.author != author:
        raise RequestRejected(
            "unauthorized", f"the grant is from {grant.author}, the op acts for {author}"
        )
    if grant.payload.get("delegate") != signer:
        raise RequestRejected(
            "unauthorized",
            f"the grant is for {grant.payload.get('delegate')}, the signer is {signer}",
        )
    if scope is None:
        raise RequestRejected("unauthorized", f"{kind} cannot be done with a delegated key")
    if scope not in grant.payload.get("scopes", []):
        raise RequestRejected(
            "unauthorized",
            f"the key's grant does not include scope {scope!r} (it has {grant.payload.get('scopes')})",
        )
    if timestamp_s > grant.payload.get("expires_s", 0):
        raise RequestRejected("unauthorized", "the key's grant had expired when this was signed")
