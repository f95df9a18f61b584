"""The gateway's HTTP face: request and response values, JSON errors, the ASGI plumbing, routing.

Theory of operation
-------------------
This module knows HTTP and ASGI and nothing of the node: no state, no signatures checked, no
ops. It exists so that what handles a request (``node.gateway.app``, the route modules, the
agent proxy) talks in plain values, ``Request`` in and ``Response`` out, and never touches an
ASGI scope or message.

``AsgiApp.__call__`` answers the lifespan protocol, bounds the requests in flight (one over the
bound is answered ``503 busy`` at once, not queued), turns the scope and the body into a
``Request``, calls ``handle`` and sends the ``Response``: JSON with a content length, or a
stream whose source is closed even when the caller goes away.

**Errors** are JSON ``{"error": code, "message": text, "field"?: name}`` with a stable code.
Anything below raises ``HttpError`` and gets exactly that; a body over
``REQUEST_BODY_BYTES_MAX`` (or the larger limit a raw-body route declares, ``body_bytes_max``)
is ``413`` (refused on its declared length before any of it is
read); any other exception is a handler bug, logged and answered ``500`` without details.

**Routing** (``Router``) matches a path, with or without the ``/v1`` prefix, against each row's
template. A ``{name}`` parameter is a 40 to 64 digit lower-case hex id, or an address when it
is called ``address``; a path that exists only with other methods is ``405``, else ``404``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

import trio

from node.gateway.auth import SignedRequest
from node.ledger.request_op import route_path

__all__ = [
    "REQUEST_BODY_BYTES_MAX",
    "AsgiApp",
    "HttpError",
    "Request",
    "Response",
    "Router",
    "json_error",
    "parameter_pattern",
]

log = logging.getLogger("formation.gateway")

# A Formfile (64 KiB) is the largest thing a request carries; the body is embedded in a request
# op whose limit is 256 KiB, and JSON escaping can grow it.
REQUEST_BODY_BYTES_MAX: Final = 128 * 1024
_HEX_ID: Final = "[0-9a-f]{40,64}"
_ADDRESS: Final = "0x[0-9a-fA-F]{40}"


def parameter_pattern(name: str) -> str:
    """The regular expression a ``{name}`` path parameter must match (also in the OpenAPI)."""
    return _ADDRESS if name == "address" else _HEX_ID


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@dataclass
class Request:
    method: str
    target: str  # path with query, as received and as signed
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    signed: SignedRequest | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-able, unless stream is set
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncIterator[bytes] | None = None


def json_error(status: int, code: str, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    return Response(status, body)


# -- routing ------------------------------------------------------------------------------------


class RouteRow(Protocol):
    """What routing needs of a row: its method and its unprefixed path template."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...


RowT = TypeVar("RowT", bound=RouteRow)


class Router(Generic[RowT]):
    """The rows of a route table with their compiled path patterns, matched in table order."""

    def __init__(self, rows: Iterable[RowT]) -> None:
        self._routes = [(row, _compile(row.path)) for row in rows]

    def match(self, request: Request) -> RowT:
        """The row for ``request``; its path parameters go into ``request.params``."""
        target = route_path(request.path)
        allowed: list[str] = []
        for row, pattern in self._routes:
            match = pattern.fullmatch(target)
            if match:
                if row.method == request.method:
                    request.params = match.groupdict()
                    return row
                allowed.append(row.method)
        if allowed:
            raise HttpError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(set(allowed)))}",
            )
        raise HttpError(404, "not_found", f"no route {request.path}; see /openapi.json")


def _compile(template: str) -> re.Pattern[str]:
    regex = re.sub(
        r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>{parameter_pattern(m.group(1))})", template
    )
    return re.compile(regex)


# -- ASGI ---------------------------------------------------------------------------------------


class AsgiApp:
    """ASGI plumbing around ``handle``, with the counters the node's status reports."""

    def __init__(self, *, inflight_max: int) -> None:
        self.requests_total = 0
        self.responses_by_status: dict[int, int] = {}
        self.inflight_max = inflight_max
        self._inflight = trio.Semaphore(inflight_max)

    async def handle(self, request: Request) -> Response:
        """The answer to one request; raise ``HttpError`` to refuse it."""
        raise NotImplementedError

    def body_bytes_max(self, method: str, path: str) -> int:
        """The body limit of a request to ``path``: the JSON one unless a route says more."""
        return REQUEST_BODY_BYTES_MAX

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        try:
            self._inflight.acquire_nowait()
        except trio.WouldBlock:
            response = json_error(
                503, "busy", f"over {self.inflight_max} requests in flight; retry shortly"
            )
            await self._send(response, send)
            return
        try:
            response = await self._serve(scope, receive)
            await self._send(response, send)
        finally:
            self._inflight.release()

    async def _send(self, response: Response, send: Any) -> None:
        self.requests_total += 1
        self.responses_by_status[response.status] = (
            self.responses_by_status.get(response.status, 0) + 1
        )
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
        ]
        if response.stream is None:
            if isinstance(response.body, bytes):  # a raw answer (a blob); headers say its type
                payload = response.body
                if "content-type" not in {k.lower() for k in response.headers}:
                    headers.append((b"content-type", b"application/octet-stream"))
            else:
                payload = json.dumps(response.body, separators=(",", ":")).encode()
                headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(payload)).encode()))
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": payload})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            async for chunk in response.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            # A caller that went away must not leave the upstream agent connection open.
            aclose = getattr(response.stream, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()

    async def _serve(self, scope: dict[str, Any], receive: Any) -> Response:
        try:
            raw_path = scope.get("raw_path") or scope["path"].encode()
            path = raw_path.decode("latin-1")
            query_text = scope.get("query_string", b"").decode("latin-1")
            target = f"{path}?{query_text}" if query_text else path
            headers: dict[str, str] = {}
            for name, value in scope.get("headers", []):
                headers[name.decode("latin-1").lower()] = value.decode("latin-1")
            body = await _read_body(receive, headers, self.body_bytes_max(scope["method"], path))
            request = Request(scope["method"], target, path, headers, body)
            return await self.handle(request)
        except HttpError as exc:
            return json_error(exc.status, exc.code, exc.message, exc.field)
        except Exception:
            log.exception("gateway handler failed on %s %s", scope.get("method"), scope.get("path"))
            return json_error(500, "internal", "the node failed to answer; see its log")


async def _read_body(receive: Any, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, "too_large", f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "disconnected", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
