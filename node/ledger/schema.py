"""Payload schemas: small, strict validators for op payloads.

Theory of operation
-------------------
Every op kind declares the shape of its payload as a ``Spec`` (field name -> ``Field``). A
payload is checked against it before anything is applied; an unknown field, a missing
required field, a wrong type or an out-of-range value is refused with ``OpRejected`` whose
message names the kind, the field path and what is allowed. Refusing unknown fields is what
keeps "set ``is_global_admin``" or "set ``credits``" from ever meaning anything.

Validators return the value to apply (normalized where there is one canonical form, such as
lower-case addresses), so a replica never stores two spellings of one thing. They are pure
functions of the payload, which is what makes a verdict identical on every replica.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.identity.keys import normalize_address
from node.ledger.op import OpRejected

__all__ = [
    "Addr",
    "Bool",
    "Enum",
    "Field",
    "Int",
    "ListOf",
    "Obj",
    "Spec",
    "Str",
    "StrMap",
    "check_payload",
    "json_schema",
]

# Signed 64-bit: what the op envelope allows and what every JSON peer can hold as an integer.
_INT_MAX = 2**63 - 1


class _Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Field:
    required: bool = False

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Field):
    length_max: int = 256
    length_min: int = 0
    pattern: str | None = None
    hint: str = ""

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise _Invalid(path, f"must be a string, got {type(value).__name__}")
        if not self.length_min <= len(value) <= self.length_max:
            raise _Invalid(
                path, f"length must be {self.length_min}..{self.length_max}, got {len(value)}"
            )
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Invalid(path, f"{value!r} is not allowed{': ' + self.hint if self.hint else ''}")
        return value


@dataclass(frozen=True)
class Int(Field):
    value_min: int = 0
    value_max: int = _INT_MAX

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not int:
            raise _Invalid(path, f"must be an integer, got {type(value).__name__}")
        if not self.value_min <= value <= self.value_max:
            raise _Invalid(path, f"must be in {self.value_min}..{self.value_max}, got {value}")
        return value


@dataclass(frozen=True)
class Bool(Field):
    def check(self, value: Any, path: str) -> Any:
        if type(value) is not bool:
            raise _Invalid(path, f"must be true or false, got {type(value).__name__}")
        return value


@dataclass(frozen=True)
class Enum(Field):
    values: tuple[str, ...] = ()

    def check(self, value: Any, path: str) -> Any:
        if value not in self.values:
            raise _Invalid(path, f"must be one of {', '.join(self.values)}; got {value!r}")
        return value


@dataclass(frozen=True)
class Addr(Field):
    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise _Invalid(path, "must be an address string (0x + 40 hex digits)")
        try:
            return normalize_address(value)
        except ValueError as exc:
            raise _Invalid(path, str(exc)) from None


@dataclass(frozen=True)
class ListOf(Field):
    item: Field = field(default_factory=Str)
    items_max: int = 32

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise _Invalid(path, f"must be a list, got {type(value).__name__}")
        if len(value) > self.items_max:
            raise _Invalid(path, f"has {len(value)} items; at most {self.items_max}")
        return [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class StrMap(Field):
    """Free-form string -> string metadata (bounded)."""

    items_max: int = 32
    key_length_max: int = 64
    value_length_max: int = 1024

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(path, f"must be an object of strings, got {type(value).__name__}")
        if len(value) > self.items_max:
            raise _Invalid(path, f"has {len(value)} entries; at most {self.items_max}")
        for key, item in value.items():
            if not 0 < len(key) <= self.key_length_max:
                raise _Invalid(f"{path}.{key}", f"keys are 1..{self.key_length_max} characters")
            if not isinstance(item, str) or len(item) > self.value_length_max:
                raise _Invalid(
                    f"{path}.{key}",
                    f"values are strings of at most {self.value_length_max} characters",
                )
        return dict(value)


Spec = Mapping[str, Field]


@dataclass(frozen=True)
class Obj(Field):
    spec: Spec = field(default_factory=dict)

    def check(self, value: Any, path: str) -> Any:
        return _check_obj(self.spec, value, path)


def _check_obj(spec: Spec, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(path or "payload", f"must be an object, got {type(value).__name__}")
    unknown = value.keys() - spec.keys()
    if unknown:
        name = sorted(unknown)[0]
        raise _Invalid(
            f"{path}.{name}" if path else name,
            f"is not a known field; allowed: {', '.join(sorted(spec)) or '(none)'}",
        )
    result: dict[str, Any] = {}
    for name, rule in spec.items():
        sub = f"{path}.{name}" if path else name
        if name in value:
            result[name] = rule.check(value[name], sub)
        elif rule.required:
            raise _Invalid(sub, "is required")
    return result


def check_payload(kind: str, spec: Spec, payload: Any) -> dict[str, Any]:
    """Validated, normalized copy of ``payload``; raises ``OpRejected('invalid_payload')``."""
    try:
        return _check_obj(spec, payload, "")
    except _Invalid as exc:
        raise OpRejected(
            "invalid_payload", f"{kind}: field '{exc.path}' {exc.message}", field=exc.path
        ) from None


def json_schema(rule: Field | Spec) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.1 dialect) that documents ``rule``; the validators above stay
    the authority (this is for clients, docs and property tests)."""
    if not isinstance(rule, Field):
        required = sorted(name for name, sub in rule.items() if sub.required)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: json_schema(sub) for name, sub in sorted(rule.items())},
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        return schema
    if isinstance(rule, Obj):
        return json_schema(rule.spec)
    if isinstance(rule, Str):
        out: dict[str, Any] = {"type": "string", "maxLength": rule.length_max}
        if rule.length_min:
            out["minLength"] = rule.length_min
        if rule.pattern is not None:
            out["pattern"] = f"^(?:{rule.pattern})$"
        if rule.hint:
            out["description"] = rule.hint
        return out
    if isinstance(rule, Int):
        return {"type": "integer", "minimum": rule.value_min, "maximum": rule.value_max}
    if isinstance(rule, Bool):
        return {"type": "boolean"}
    if isinstance(rule, Enum):
        return {"type": "string", "enum": list(rule.values)}
    if isinstance(rule, Addr):
        return {
            "type": "string",
            "pattern": "^0x[0-9a-fA-F]{40}$",
            "description": "an Ethereum address",
        }
    if isinstance(rule, ListOf):
        return {"type": "array", "items": json_schema(rule.item), "maxItems": rule.items_max}
    if isinstance(rule, StrMap):
        return {
            "type": "object",
            "maxProperties": rule.items_max,
            "propertyNames": {"minLength": 1, "maxLength": rule.key_length_max},
            "additionalProperties": {"type": "string", "maxLength": rule.value_length_max},
        }
    raise TypeError(f"no JSON schema for {type(rule).__name__}")
