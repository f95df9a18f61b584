"""Canonical JSON: the one spelling of a value that op bodies and request bodies are held to.

Theory of operation
-------------------
A replica never trusts a field a peer could have re-spelled, so every op body (``node.ledger.op``)
and every signed request body (``node.ledger.request_op``) must be *canonical*:
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as UTF-8,
integers only (a float's text form is not portable), 64-bit integers at most, no duplicate
keys, and at most ``DEPTH_MAX`` levels of nesting. One content then has one encoding, hence
one digest and one op id.

Rules, each of which has a reason:

- ``nesting_too_deep`` runs on the raw bytes *before* any parse: CPython's C JSON parser
  recurses once per level, and a deep enough ``[[[[...`` crashes the interpreter (a
  segfault, not an exception) before any limit of ours applies.
- ``reject_float`` is the parser's ``parse_float`` hook, so a float is refused where it is
  read instead of by a second walk over the value.
- ``require_canonical`` compares the parsed value's canonical bytes with what arrived, which
  catches duplicate keys, spaces and any other spelling in one comparison.
- ``check_hlc`` is the one shape rule for the ``hlc`` field both envelopes carry.

This module is shared by ``op`` and ``request_op`` so neither imports the other's privates;
it imports neither of them.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = [
    "DEPTH_MAX",
    "ENVELOPE_VERSION",
    "INT_MAX",
    "REQUEST_ENVELOPE_VERSION",
    "OpRejected",
    "canonical_json",
    "check_hlc",
    "dumps_canonical",
    "nesting_too_deep",
    "reject_float",
    "require_canonical",
]

# The two op envelopes: a node's own signed op, and a user's signed gateway request carried
# as the op itself (node.ledger.request_op).
ENVELOPE_VERSION: Final = 1
REQUEST_ENVELOPE_VERSION: Final = 2
# JSON nesting bound: payloads are records of records at most; deep nesting is only an attack.
DEPTH_MAX: Final = 8
INT_MAX: Final = 2**63 - 1


class OpRejected(ValueError):
    """An op failed verification or authorization. ``code`` is stable; the message explains."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field  # the payload field at fault, when one is

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


def _check_value(value: Any, depth: int) -> None:
    if depth > DEPTH_MAX:
        raise OpRejected("malformed", f"op body nests deeper than {DEPTH_MAX} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -INT_MAX - 1 <= value <= INT_MAX:
            raise OpRejected("malformed", f"integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        raise OpRejected("malformed", "op bodies carry integers only; floats are not portable")
    if isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for item in value.values():
            _check_value(item, depth + 1)
        return
    raise OpRejected("malformed", f"unsupported JSON value of type {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """Canonical bytes of a JSON value (sorted keys, no spaces, UTF-8, integers only)."""
    _check_value(value, 0)
    return dumps_canonical(value)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")
# Honest bodies open a few dozen containers; only past this do we pay for an exact depth scan.
_CONTAINERS_CHEAP_MAX: Final = 64


def nesting_too_deep(body: bytes) -> bool:
    """True if ``body`` nests JSON containers deeper than ``DEPTH_MAX``.

    CPython's C JSON parser recurses once per level and a deep enough document crashes the
    interpreter (a segfault, not an exception) before any limit of ours applies, so a hostile
    peer could kill a node with ``[[[[...``. This scan runs before parsing.
    """
    if body.count(b"[") + body.count(b"{") <= _CONTAINERS_CHEAP_MAX:
        return False
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub(b"", body)):
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > DEPTH_MAX + 1:  # +1: the envelope object itself
                return True
        else:
            depth -= 1
    return False


def reject_float(text: str) -> Any:
    """The ``parse_float`` hook of every parse of an op or request body."""
    raise OpRejected("malformed", f"op bodies carry integers only; {text} is a float")


def dumps_canonical(value: Any) -> bytes:
    """Canonical bytes of an already checked value (``canonical_json`` checks first)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def require_canonical(fields: dict[str, Any], body: bytes) -> None:
    """Refuse ``body`` unless it is exactly the canonical spelling of ``fields``."""
    if dumps_canonical(fields) != body:
        raise OpRejected(
            "not_canonical", "op body is not canonical JSON (sorted keys, no spaces, UTF-8)"
        )


def check_hlc(hlc: Any) -> None:
    """Refuse an ``hlc`` field that is not ``[wall_ms, logical]``, two 64-bit naturals."""
    if not (
        isinstance(hlc, list)
        and len(hlc) == 2
        and all(type(x) is int and 0 <= x <= INT_MAX for x in hlc)
    ):
        raise OpRejected("malformed", "hlc must be [wall_ms, logical], two non-negative integers")
