"""The gateway's HTTP/1.1 server: a small, strict server on Trio that speaks ASGI to one app.

Theory of operation
-------------------
The gateway answers one kind of client: programs on the same host (``form``, the browser
page's requests through it, load generators) sending small signed JSON requests, sometimes a
larger upload, sometimes reading a stream (a build log). Hypercorn's general machinery (h11's
state machine, a task group and queues per request, HTTP/2 and WebSocket plumbing we never
use) cost more than the signature check it wraps (docs/decisions.md D20). This server does
only what the gateway needs, and bounds all of it:

* **Connections**: at most ``connections_max`` at once; one more is answered ``503`` and
  closed. A connection is kept alive (HTTP/1.1 default; ``Connection: close`` or HTTP/1.0
  without keep-alive ends it) and idles at most ``keep_alive_s``; requests on one connection
  are answered in order (pipelined ones wait in the buffer).
* **Requests**: the request line and headers together at most ``header_bytes_max`` (else
  ``431``), each read within ``read_timeout_s`` once started (a slowloris is cut off); a body
  by ``Content-Length`` or ``Transfer-Encoding: chunked``, handed to the app in pieces of at
  most ``body_chunk_bytes`` as it asks (``receive``), so the app's own size limits (``413`` on
  the declared length, before any of the body is read) hold. A body the app did not read is
  drained up to ``drain_bytes_max`` to keep the connection, else the connection closes.
  ``Expect: 100-continue`` gets its interim answer when the app first reads the body.
* **Responses**: with the app's ``content-length`` as given; without one, chunked (streams
  such as build logs), so a client can tell the end from a cut. A malformed request gets a
  JSON ``400`` (the gateway's error shape) and the connection is closed; so does an app that
  fails before answering (``500``).

Everything malformed is refused with a status and a message naming the problem, never with a
crash of the server: ``tests/gateway/test_server.py`` sends it garbage, oversize heads, bad
chunk sizes, slow clients and abrupt disconnects.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

import trio

__all__ = ["ServerLimits", "serve_http"]

log = logging.getLogger("formation.gateway.http")

App = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Any], Awaitable[None]]

_REASONS: Final = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_RECV_BYTES: Final = 65536
_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_CHUNK_LINE_BYTES_MAX: Final = 1024


@dataclass(frozen=True)
class ServerLimits:
    """What one gateway server allows (module docstring)."""

    connections_max: int = 256
    header_bytes_max: int = 16 * 1024
    headers_max: int = 100
    keep_alive_s: float = 30.0
    read_timeout_s: float = 30.0
    body_chunk_bytes: int = 256 * 1024
    drain_bytes_max: int = 1024 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Closed(Exception):
    """The client went away (or idled out) between or within requests."""


@dataclass
class _Conn:
    stream: trio.SocketStream
    limits: ServerLimits
    buffer: bytearray = field(default_factory=bytearray)

    async def _fill(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s) as scope:
            try:
                data = await self.stream.receive_some(_RECV_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Closed from None
        if scope.cancelled_caught:
            raise _Closed("timed out")
        if not data:
            raise _Closed
        self.buffer += data

    async def read_head(self) -> bytes | None:
        """The request line and headers (without the blank line), or None at a clean end."""
        limit = self.limits.header_bytes_max
        first = True
        while True:
            # Leading empty lines before a request are allowed (RFC 9112 2.2).
            while self.buffer[:2] == b"\r\n":
                del self.buffer[:2]
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end > limit:
                    raise _BadRequest(431, f"the request head is over {limit} bytes")
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) > limit:
                raise _BadRequest(431, f"the request head is over {limit} bytes")
            timeout_s = (
                self.limits.keep_alive_s
                if first and not self.buffer
                else (self.limits.read_timeout_s)
            )
            try:
                await self._fill(timeout_s)
            except _Closed:
                if not self.buffer:
                    return None
                raise
            first = False

    async def read_some_up_to(self, count: int) -> bytes:
        """Up to ``count`` bytes (at least one), from the buffer or the socket."""
        if not self.buffer:
            await self._fill(self.limits.read_timeout_s)
        piece = bytes(self.buffer[:count])
        del self.buffer[:count]
        return piece

    async def read_line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > _CHUNK_LINE_BYTES_MAX:
                raise _BadRequest(400, "a chunk size line is too long")
            await self._fill(self.limits.read_timeout_s)
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line


@dataclass
class _Body:
    """One request's body, handed out as the app asks."""

    conn: _Conn
    length: int | None  # Content-Length, or None for chunked
    chunked: bool
    expect_continue: bool
    left: int = 0
    done: bool = False
    chunk_left: int = 0

    def __post_init__(self) -> None:
        self.left = self.length or 0
        self.done = not self.chunked and self.left == 0

    async def next(self, chunk_bytes: int) -> bytes:
        if self.done:
            return b""
        if self.expect_continue:
            self.expect_continue = False
            await self.conn.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.chunked:
            piece = await self.conn.read_some_up_to(min(chunk_bytes, self.left))
            self.left -= len(piece)
            self.done = self.left == 0
            return piece
        if self.chunk_left == 0:
            line = (await self.conn.read_line()).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise _BadRequest(400, f"bad chunk size {line[:20]!r}") from None
            if size < 0 or len(line) > 16:
                raise _BadRequest(400, "bad chunk size")
            if size == 0:
                while await self.conn.read_line():  # trailers, ignored
                    pass
                self.done = True
                return b""
            self.chunk_left = size
        piece = await self.conn.read_some_up_to(min(chunk_bytes, self.chunk_left))
        self.chunk_left -= len(piece)
        if self.chunk_left == 0 and await self.conn.read_line() != b"":
            raise _BadRequest(400, "a chunk does not end with CRLF")
        return piece

    async def drain(self, bytes_max: int) -> bool:
        """Read what the app left; False when over ``bytes_max`` (close instead)."""
        total = 0
        try:
            while not self.done:
                total += len(await self.next(65536))
                if total > bytes_max:
                    return False
        except _BadRequest:  # the answer is out; a bad rest only ends the connection
            return False
        return True


def _parse_head(
    head: bytes, headers_max: int
) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _BadRequest(400, "the request line must be METHOD TARGET HTTP/1.x")
    method, target, version = parts
    if not (method.isalpha() and method.isupper() and len(method) <= 20):
        # Any token goes on: the app's router answers an unknown method 405, as for others.
        raise _BadRequest(400, "the method must be an upper-case token such as GET")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _BadRequest(400, "only HTTP/1.0 and HTTP/1.1 are served")
    if not target.startswith(b"/"):
        raise _BadRequest(400, "the request target must be a path")
    if len(lines) - 1 > headers_max:
        raise _BadRequest(431, f"over {headers_max} header fields")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise _BadRequest(400, "a header line must be NAME: VALUE")
        if line[:1] in (b" ", b"\t"):
            raise _BadRequest(400, "folded header lines are not accepted")
        headers.append((name.lower(), value.strip(b" \t")))
    return method, target, version, headers


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode()


def _error_bytes(status: int, message: str) -> bytes:
    code = {400: "bad_request", 431: "header_too_large", 501: "not_implemented"}.get(
        status, "bad_request"
    )
    body = json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()
    return (
        _status_line(status)
        + b"content-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _serve_one(app: App, conn: _Conn, head: bytes, client: Any, server: Any) -> bool:
    """Answer one request; whether the connection may carry another."""
    limits = conn.limits
    method, target, version, headers = _parse_head(head, limits.headers_max)
    fields: dict[bytes, bytes] = {}
    for name, value in headers:
        fields[name] = fields[name] + b"," + value if name in fields else value
    if version == b"HTTP/1.1" and b"host" not in fields:
        raise _BadRequest(400, "an HTTP/1.1 request needs a Host header")
    transfer = fields.get(b"transfer-encoding", b"").lower()
    length_text = fields.get(b"content-length")
    if transfer:
        if transfer != b"chunked":
            raise _BadRequest(501, "only chunked transfer-encoding is accepted")
        if length_text is not None:
            raise _BadRequest(400, "content-length and transfer-encoding together")
        length = None
    elif length_text is not None:
        if not length_text.isdigit() or len(length_text) > 18:
            raise _BadRequest(400, "content-length must be a number")
        length = int(length_text)
    else:
        length = 0
    connection = fields.get(b"connection", b"").lower()
    keep = b"close" not in connection if version == b"HTTP/1.1" else b"keep-alive" in connection
    body = _Body(
        conn,
        length,
        chunked=length is None,
        expect_continue=fields.get(b"expect", b"").lower() == b"100-continue",
    )
    raw_path, _, query = target.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": version[5:].decode(),
        "method": method.decode(),
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": server,
    }
    state: dict[str, Any] = {"started": False, "chunked": False, "ended": False, "cut": False}

    async def receive() -> dict[str, Any]:
        if state["cut"]:
            return {"type": "http.disconnect"}
        if body.done:
            return {"type": "http.request", "body": b"", "more_body": False}
        try:
            piece = await body.next(limits.body_chunk_bytes)
        except (_BadRequest, _Closed, trio.BrokenResourceError) as exc:
            # ASGI's word for a body that cannot be read; the app answers it (400) and the
            # connection then closes, since where the next request starts is unknown.
            state["cut"] = True
            log.debug("request body cut: %s", exc)
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": piece, "more_body": not body.done}

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            out = bytearray(_status_line(int(message["status"])))
            has_length = False
            for name, value in message.get("headers", []):
                if name.lower() == b"content-length":
                    has_length = True
                out += name + b": " + value + b"\r\n"
            if not has_length and method != b"HEAD":
                out += b"transfer-encoding: chunked\r\n"
                state["chunked"] = True
            if not keep:
                out += b"connection: close\r\n"
            out += b"\r\n"
            state["started"] = True
            if state["chunked"]:
                await conn.stream.send_all(bytes(out))  # a stream: the client sees it begin
            else:
                state["head"] = bytes(out)  # sent with the body: one write
            return
        if kind != "http.response.body" or not state["started"] or state["ended"]:
            return
        data = message.get("body", b"")
        more = message.get("more_body", False)
        out = bytearray(state.pop("head", b""))
        if method != b"HEAD":
            if state["chunked"]:
                if data:
                    out += f"{len(data):x}\r\n".encode() + data + b"\r\n"
                if not more:
                    out += b"0\r\n\r\n"
            else:
                out += data
        if out:
            await conn.stream.send_all(bytes(out))
        if not more:
            state["ended"] = True

    await app(scope, receive, send)
    if not state["ended"]:
        if state["started"]:
            return False  # a response cut short: the client sees the connection end
        await conn.stream.send_all(_error_bytes(500, "the node failed to answer; see its log"))
        return False
    if not keep or state["cut"]:
        return False
    return await body.drain(limits.drain_bytes_max)


async def _handle(
    app: App, stream: trio.SocketStream, limits: ServerLimits, slots: trio.CapacityLimiter
) -> None:
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        body = json.dumps({"error": "busy", "message": "too many connections"}).encode()
        # Answer, stop sending, and read a moment: closing with the client's request unread
        # would reset the connection before the client reads the 503.
        with trio.move_on_after(1), contextlib.suppress(*_GONE):
            await stream.send_all(
                _status_line(503)
                + b"content-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await stream.send_eof()
            while await stream.receive_some(_RECV_BYTES):
                pass
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return
    conn = _Conn(stream, limits)
    try:
        client = stream.socket.getpeername()
        server = stream.socket.getsockname()
        client, server = (client[0], client[1]), (server[0], server[1])
        while True:
            head = await conn.read_head()
            if head is None or not await _serve_one(app, conn, head, client, server):
                return
    except _BadRequest as bad:
        with trio.move_on_after(1), contextlib.suppress(*_GONE):
            await stream.send_all(_error_bytes(bad.status, bad.message))
    except (_Closed, *_GONE):
        pass
    finally:
        slots.release()
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def serve_http(
    app: App,
    host: str,
    port: int,
    *,
    limits: ServerLimits | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``task_status`` gets the bound URL
    (``http://HOST:PORT``, the real port when 0 was asked). A port in use is an ``OSError``."""
    limits = limits or ServerLimits()
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=128)
    bound = listeners[0].socket.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    slots = trio.CapacityLimiter(limits.connections_max)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(app, stream, limits, slots)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        log.info("Running on http://%s:%d", shown, bound[1])
        task_status.started(f"http://{shown}:{bound[1]}")
