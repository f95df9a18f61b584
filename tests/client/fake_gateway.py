"""A gateway stand-in for client tests: canned answers over ``httpx.MockTransport``.

Every request is recorded. A signed one is verified exactly as the real gateway does
(``node.gateway.auth.verify`` against the target and body *as received*, with a nonce cache,
then the ``X-Signer`` check), so a test that passes here proves the client signs the bytes it
sends with the key it names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from node.gateway.auth import AuthError, NonceCache, verify
from node.identity.keys import normalize_address

NOW_S = 1_790_000_000

Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


def answer(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


def refuse(status: int, code: str, message: str, field_name: str | None = None) -> httpx.Response:
    body = {"error": code, "message": message}
    if field_name is not None:
        body["field"] = field_name
    return httpx.Response(status, json=body)


@dataclass
class Seen:
    method: str
    target: str  # path and query as sent, percent-encoded
    body: bytes
    headers: httpx.Headers
    signer: str | None  # None: sent unsigned

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeGateway:
    routes: dict[tuple[str, str], Answer] = field(default_factory=dict)
    now_s: int = NOW_S
    seen: list[Seen] = field(default_factory=list)
    nonces: NonceCache = field(default_factory=NonceCache)

    def on(self, method: str, target: str, reply: Answer) -> FakeGateway:
        self.routes[(method, target)] = reply
        return self

    def handle(self, request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode("ascii")
        body = request.read()
        signer = None
        if "x-message" in request.headers:
            try:
                signer = verify(
                    request.method, target, body, request.headers, self.now_s, self.nonces
                )
            except AuthError as exc:
                return refuse(401, exc.code, str(exc))
            claimed = request.headers.get("x-signer")
            if claimed is not None:
                try:
                    claimed = normalize_address(claimed.strip())
                except ValueError as exc:
                    return refuse(400, "invalid_header", f"X-Signer: {exc}")
                if claimed != signer:
                    return refuse(401, "wrong_signer", f"signed by {signer}, not {claimed}")
        self.seen.append(Seen(request.method, target, body, request.headers, signer))
        reply = self.routes.get((request.method, target))
        if reply is None:
            return refuse(404, "not_found", f"no route {request.method} {target}")
        return reply(request) if callable(reply) else reply

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @property
    def last(self) -> Seen:
        return self.seen[-1]
