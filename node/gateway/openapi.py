"""The OpenAPI 3.1 document of a route table (served at ``/openapi.json``).

Generated from the same ``Endpoint`` rows the gateway routes with, so the document cannot
describe a route the gateway does not serve, or miss one. Every operation lists the error
answers the gateway can give it (``node.gateway.http``: one JSON error shape, ``Error``);
signed and optional routes add ``401``/``403``, writes add ``409``/``413``. Paths are listed
under ``/v1``; the description says each also answers unprefixed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from node import __version__
from node.gateway.endpoint import EMPTY_BODY, Endpoint
from node.gateway.http import parameter_pattern

__all__ = ["openapi"]

_ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "stable error code"},
        "message": {"type": "string", "description": "what went wrong and how to fix it"},
        "field": {"type": "string", "description": "the request field at fault"},
    },
}

# A spend the rights in reach could not cover (node.ledger.billing.InsufficientCredits).
_INSUFFICIENT_SCHEMA: Final = {
    "type": "object",
    "required": ["error", "message", "required", "available"],
    "properties": {
        **_ERROR_SCHEMA["properties"],  # type: ignore[dict-item]
        "required": {"type": "integer", "description": "the credits the spend needs"},
        "available": {
            "type": "integer",
            "description": "the account's available credits in all, as this node sees them",
        },
        "available_here": {
            "type": "integer",
            "description": "what this node held of them once its peers answered (or not)",
        },
    },
}


def _schema_of(media_type: str) -> dict[str, Any]:
    if media_type == "application/json":
        return {"type": "object"}
    return {"type": "string", "format": "binary"}


def openapi(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints``, in their order."""
    paths: dict[str, dict[str, Any]] = {}
    error_ref = {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    }
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "operationId": endpoint.operation_id,
            "summary": endpoint.summary,
            "tags": [endpoint.tag],
            "responses": {
                str(endpoint.status): {
                    "description": "success",
                    "content": {
                        endpoint.response_type: {"schema": _schema_of(endpoint.response_type)}
                    },
                },
                "400": {"description": "the request is invalid", **error_ref},
                "404": {"description": "no such route or entity", **error_ref},
                "405": {"description": "the path exists with another method", **error_ref},
                "503": {"description": "busy or not ready: retry", **error_ref},
            },
        }
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": f"^{parameter_pattern(name)}$"},
            }
            for name in re.findall(r"\{(\w+)\}", endpoint.path)
        ]
        if parameters:
            operation["parameters"] = parameters
        if endpoint.auth != "public":
            operation["security"] = [{"signedRequest": []}] + (
                [{}] if endpoint.auth == "optional" else []
            )
            operation["responses"]["401"] = {"description": "missing or bad signature", **error_ref}
            operation["responses"]["403"] = {"description": "not yours", **error_ref}
        if endpoint.method == "PUT":  # a raw body (a blob), not JSON
            operation["responses"]["413"] = {"description": "body too large", **error_ref}
            operation["requestBody"] = {
                "required": True,
                "content": {endpoint.body_type: {"schema": _schema_of(endpoint.body_type)}},
            }
        if endpoint.method == "POST":
            operation["responses"]["409"] = {"description": "already exists", **error_ref}
            operation["responses"]["413"] = {"description": "body too large", **error_ref}
            body = endpoint.body_schema
            operation["requestBody"] = {
                "required": body is not None and body is not EMPTY_BODY,
                "content": {
                    "application/json": {"schema": body if body is not None else {"type": "object"}}
                },
            }
        for status, description in endpoint.responses:
            schema = "InsufficientCredits" if status == 402 else "Error"
            operation["responses"][str(status)] = {
                "description": description,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            }
        paths.setdefault(f"/v1{endpoint.path}", {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "formation-node gateway",
            "version": __version__,
            "description": (
                "Every route also answers without the /v1 prefix. Signed requests carry "
                "X-Message (the canonical line) and X-Signature (EIP-191 personal_sign); "
                "see docs/api.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA, "InsufficientCredits": _INSUFFICIENT_SCHEMA},
            "securitySchemes": {
                "signedRequest": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Signature",
                    "description": (
                        "0x + 65-byte EIP-191 signature of the X-Message line "
                        "formation:v1:METHOD:path?query:sha256hex(body):unix_s:nonce "
                        "(a delegated key: formation:v2:...:nonce:0x<account it acts for>)"
                    ),
                }
            },
        },
    }
