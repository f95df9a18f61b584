"""One row of the gateway's route table (``Endpoint``) and the body schemas rows take from kinds.

A row says all there is to say about a route: its method and path template, its handler, who
may call it, the JSON schema of its body, its success status and its OpenAPI operation id,
summary and tag. Routing (``node.gateway.http.Router``), the OpenAPI document
(``node.gateway.openapi``) and the route table in ``docs/api.md`` (kept in step by a test) are
all read from the rows, so they cannot disagree. Fields are keyword-only, so that each row in
``node.gateway.routes`` reads as what it declares.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from node.ledger.schema import Spec, json_schema
from node.ledger.state import KINDS

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp
    from node.gateway.http import Request, Response

__all__ = ["EMPTY_BODY", "Auth", "Endpoint", "Handler", "kind_schema"]

Handler = Callable[["GatewayApp", "Request"], Awaitable["Response"]]

# "signed" needs a signature; "optional" takes one and shows the signer more; "public" ignores it.
Auth = Literal["public", "signed", "optional"]

# The body of a POST that takes none: an empty object, and the OpenAPI calls it not required.
EMPTY_BODY: Final = {"type": "object", "additionalProperties": False, "properties": {}}


@dataclass(frozen=True, kw_only=True, slots=True)
class Endpoint:
    method: str
    path: str  # the template, unprefixed (it also answers under /v1), with {name} parameters
    handler: Handler
    operation_id: str  # OpenAPI operationId
    summary: str
    auth: Auth = "public"
    body_schema: dict[str, Any] | None = None  # JSON schema of the body; None: any object
    status: int = 200  # on success
    tag: str = "node"  # OpenAPI tag: the route's group
    # A raw (non-JSON) body: its media type, and its own size limit instead of the JSON one.
    body_type: str = "application/json"
    body_bytes_max: int | None = None  # None: http.REQUEST_BODY_BYTES_MAX
    response_type: str = "application/json"  # of the success answer
    # Answers beyond the ones every route of its kind can give: (status, description).
    responses: tuple[tuple[int, str], ...] = ()


def kind_schema(kind: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON schema of a write's body: the payload spec of ``kind`` without the fields the
    gateway fills in itself (``drop``: from the signer, the path or the state)."""
    spec: Spec = {k: v for k, v in KINDS[kind].spec.items() if k not in drop}
    return json_schema(spec)
