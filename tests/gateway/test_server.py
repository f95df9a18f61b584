"""The gateway's own HTTP/1.1 server (``node.gateway.server``) against raw, hostile clients.

A tiny ASGI app echoes what it got; the tests speak bytes over real sockets on 127.0.0.1:
keep-alive and pipelining, chunked bodies both ways, ``Expect: 100-continue``, and every kind
of bad input (garbage, oversize heads, bad lengths and chunk sizes, no Host, slow and vanishing
clients, too many connections). Each bad input gets its status and a JSON error, and the
server answers a good request afterwards.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from node.gateway.server import ServerLimits, serve_http


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"cut"})
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/skip":  # answers without reading the body
        payload = b"skipped"
    else:
        payload = json.dumps(
            {
                "method": scope["method"],
                "path": scope["path"],
                "query": scope["query_string"].decode(),
                "body": body.decode(),
            }
        ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@asynccontextmanager
async def _server(limits: ServerLimits | None = None) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: serve_http(
                _echo, "127.0.0.1", 0, limits=limits, task_status=task_status
            )
        )
        yield int(url.rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()


async def _exchange(port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(65536):
                out += chunk
                if not read_until_close and out.count(b"HTTP/1.1 ") >= 1 and b"\r\n\r\n" in out:
                    break
        return out


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def _still_serves(port: int) -> None:
    answer = await _exchange(port, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(answer) == 200, answer


async def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async with _server() as port:
        requests = (
            b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = await _exchange(port, requests)
        bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in _split(answer)]
        assert [(b["method"], b["path"], b["query"], b["body"]) for b in bodies] == [
            ("GET", "/a", "x=1", ""),
            ("POST", "/b", "", "hello"),
            ("GET", "/c", "", ""),
        ]


def _split(answer: bytes) -> list[bytes]:
    """Responses with a content-length, one after the other."""
    out = []
    while answer:
        head, rest = answer.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append(head + b"\r\n\r\n" + rest[:length])
        answer = rest[length:]
    return out


async def test_chunked_bodies_in_and_a_stream_out() -> None:
    async with _server() as port:
        request = (
            b"POST /in HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
        )
        answer = await _exchange(port, request)
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["body"] == "hello world"
        answer = await _exchange(
            port, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        head, body = answer.split(b"\r\n\r\n", 1)
        assert b"transfer-encoding: chunked" in head
        assert body == b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n"


async def test_expect_continue_gets_its_interim_answer() -> None:
    async with _server() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
            )
            interim = await stream.receive_some(100)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(b"ok")
            final = await stream.receive_some(65536)
            assert json.loads(final.split(b"\r\n\r\n", 1)[1])["body"] == "ok"


async def test_an_unread_body_is_drained_so_the_connection_goes_on() -> None:
    async with _server() as port:
        requests = (
            b"POST /skip HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd"
            b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answers = _split(await _exchange(port, requests))
        assert answers[0].endswith(b"skipped")
        assert json.loads(answers[1].split(b"\r\n\r\n", 1)[1])["path"] == "/next"


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"garbage\r\n\r\n", 400, b"request line"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, b"HTTP/1.0 and HTTP/1.1"),
        (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"method"),
        (b"GET nopath HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"path"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, b"Host"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400, b"NAME: VALUE"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded: y\r\n\r\n", 400, b"NAME: VALUE"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, b"number"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n", 400, b"number"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            b"chunked",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            400,
            b"together",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431, b"over"),
    ],
)
async def test_bad_requests_get_a_status_and_a_json_error(
    request_bytes: bytes, status: int, says: bytes
) -> None:
    async with _server() as port:
        answer = await _exchange(port, request_bytes)
        assert _status(answer) == status, answer[:300]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert says in body["message"].encode(), body
        await _still_serves(port)


async def test_a_bad_chunk_size_cuts_the_body_and_the_app_answers_it() -> None:
    async with _server() as port:
        request = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n"
        answer = await _exchange(port, request)
        assert _status(answer) == 400
        assert b"cut" in answer.split(b"\r\n\r\n", 1)[1]
        await _still_serves(port)


async def test_slow_idle_and_vanishing_clients_do_not_hold_the_server() -> None:
    limits = ServerLimits(keep_alive_s=0.3, read_timeout_s=0.3)
    async with _server(limits) as port:
        # Idle: the connection is closed after keep_alive_s, with nothing sent.
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(3):
            assert await idle.receive_some(100) == b""
        await idle.aclose()
        # Slowloris: half a head, then silence: cut after read_timeout_s.
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(b"GET / HTTP/1.1\r\nHo")
        with trio.fail_after(3):
            while await slow.receive_some(100):
                pass
        await slow.aclose()
        # Gone mid-body.
        gone = await trio.open_tcp_stream("127.0.0.1", port)
        await gone.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        await gone.aclose()
        await _still_serves(port)


async def test_connections_over_the_limit_are_refused_with_503() -> None:
    async with _server(ServerLimits(connections_max=2)) as port:
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await trio.sleep(0.1)  # both accepted and counted
        answer = await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(answer) == 503
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "busy"
        for stream in held:
            await stream.aclose()
        await trio.sleep(0.1)
        await _still_serves(port)


async def test_random_bytes_never_stop_the_server() -> None:
    import random

    rng = random.Random(5)
    async with _server(ServerLimits(read_timeout_s=0.2, keep_alive_s=0.2)) as port:
        blobs = []
        for _ in range(200):
            blob = rng.randbytes(rng.randrange(1, 400))
            if rng.random() < 0.5:
                blob = b"POST / HTTP/1.1\r\nHost: x\r\n" + blob
            blobs.append(blob)
        for start in range(0, len(blobs), 50):  # 50 hostile clients at a time
            async with trio.open_nursery() as nursery:
                for blob in blobs[start : start + 50]:
                    nursery.start_soon(_exchange, port, blob)
        await _still_serves(port)
