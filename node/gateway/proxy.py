"""Agent calls: ``/agents/<id>/hire`` and ``/run_task`` proxied to the agent's endpoint.

Theory of operation
-------------------
An agent's record names its endpoint (``host``, ``port``, ``path``); without one, as the
upstream did, the agent is reached at the mesh address a host node reported for a started
instance of its build, on ``metadata.task_endpoint_port`` (8000) and ``task_endpoint_path``
(``/default_task``). The gateway forwards the caller's body there and streams the answer back as it arrives, so a long generation reaches
the caller token by token. The endpoint is written by the agent's creator, so it is hostile
input: the gateway only dials IP literals inside the node's ``agent_networks`` (loopback for
the ``local`` network; the mesh range elsewhere) and never resolves names, so a listing cannot
turn every node into a scanner of its own LAN (server-side request forgery) or rebind DNS.

Usage is measured by the gateway (bytes each way, wall time) and, if the agent ends its answer
with the upstream's ``FINAL_USAGE_INFO:{json}`` line, the tokens it reports. With
``Accept: text/event-stream`` the answer is wrapped as server-sent events (``message`` per
chunk, then one ``usage`` event), as the upstream gateway did; otherwise bytes pass through
untouched and usage goes to the log and the metrics. Cost comes with the billing ledger.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import httpx

from node.gateway.http import HttpError, Request, Response

__all__ = ["AgentProxy"]

log = logging.getLogger("formation.gateway.proxy")

_USAGE_PREFIX: Final = b"FINAL_USAGE_INFO:"
_ANSWER_BYTES_MAX: Final = 64 * 1024 * 1024
_FORWARDED_HEADERS: Final = ("content-type", "accept")
# The upstream agent gateway's defaults for an agent reached through its instance.
_INSTANCE_PORT_DEFAULT: Final = 8000
_INSTANCE_PATH_DEFAULT: Final = "/default_task"


class AgentProxy:
    def __init__(
        self,
        agent_networks: Sequence[str],
        *,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.networks = [ipaddress.ip_network(n) for n in agent_networks]
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._transport = transport
        self.calls_total = 0
        self.usage: list[dict[str, Any]] = []  # the last few calls, for status and tests
        self._usage_max = 256

    def _url(self, agent: dict[str, Any], instances: list[dict[str, Any]]) -> str:
        """Where the agent answers: its published endpoint, else (as upstream) the mesh address
        of a started instance of its build, on the port and path in its metadata."""
        endpoint = agent.get("endpoint")
        if endpoint:
            host, port, path = endpoint["host"], endpoint["port"], endpoint.get("path") or "/"
        else:
            running = [i for i in instances if i.get("status") == "Started" and i.get("formnet_ip")]
            if not running:
                raise HttpError(
                    409,
                    "no_endpoint",
                    f"agent {agent['agent_id']} has no endpoint and no started instance of its "
                    "build reports an address; its owner must publish one or start an instance",
                )
            metadata = agent.get("metadata") or {}
            host = running[0]["formnet_ip"]
            port_text = str(metadata.get("task_endpoint_port", _INSTANCE_PORT_DEFAULT))
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise HttpError(
                    409,
                    "endpoint_refused",
                    f"agent metadata task_endpoint_port {port_text!r} is not a port",
                )
            port = int(port_text)
            path = str(metadata.get("task_endpoint_path", _INSTANCE_PATH_DEFAULT))
            if not path.startswith("/") or any(c.isspace() for c in path):
                raise HttpError(
                    409,
                    "endpoint_refused",
                    f"agent metadata task_endpoint_path {path!r} is not a path",
                )
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise HttpError(
                409,
                "endpoint_refused",
                f"agent endpoint host {host!r} is not an IP address; this node dials IP literals only",
            ) from None
        if not any(address in network for network in self.networks):
            raise HttpError(
                409,
                "endpoint_refused",
                f"agent endpoint {address} is outside this node's agent networks ({', '.join(map(str, self.networks))})",
            )
        literal = f"[{address}]" if address.version == 6 else str(address)
        # Both calls go to the one path the agent serves; X-Formation-Call says which.
        return f"http://{literal}:{port}{path}"

    async def call(
        self,
        agent: dict[str, Any],
        call: str,
        request: Request,
        caller: str,
        instances: list[dict[str, Any]] | None = None,
    ) -> Response:
        url = self._url(agent, instances or [])
        headers = {k: v for k, v in request.headers.items() if k in _FORWARDED_HEADERS}
        headers["x-formation-caller"] = caller
        headers["x-formation-call"] = call
        client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
        started = time.monotonic()
        try:
            upstream = await client.send(
                client.build_request("POST", url, content=request.body, headers=headers),
                stream=True,
            )
        except httpx.HTTPError as exc:
            await client.aclose()
            raise HttpError(
                502, "agent_unreachable", f"the agent at {url} did not answer: {exc}"
            ) from None
        sse = "text/event-stream" in request.headers.get("accept", "")
        usage: dict[str, Any] = {
            "agent_id": agent["agent_id"],
            "caller": caller,
            "call": call,
            "status": upstream.status_code,
            "request_bytes": len(request.body),
        }

        async def stream() -> AsyncIterator[bytes]:
            received = 0
            tail = b""
            try:
                async for chunk in upstream.aiter_raw():
                    received += len(chunk)
                    if received > _ANSWER_BYTES_MAX:
                        log.warning(
                            "agent %s answer over %d bytes; cut",
                            agent["agent_id"],
                            _ANSWER_BYTES_MAX,
                        )
                        break
                    tail = (tail + chunk)[-4096:]
                    yield _sse("message", chunk) if sse else chunk
            finally:
                await upstream.aclose()
                await client.aclose()
                usage["response_bytes"] = received
                usage["duration_ms"] = int((time.monotonic() - started) * 1000)
                usage.update(_reported_usage(tail))
                self._record(usage)
            if sse:
                yield _sse("usage", json.dumps(usage).encode())

        out_headers = {"x-formation-agent": agent["agent_id"]}
        if sse:
            out_headers["content-type"] = "text/event-stream"
            out_headers["cache-control"] = "no-cache"
        else:
            out_headers["content-type"] = upstream.headers.get(
                "content-type", "application/octet-stream"
            )
        return Response(
            upstream.status_code if not sse else 200, headers=out_headers, stream=stream()
        )

    def _record(self, usage: dict[str, Any]) -> None:
        self.calls_total += 1
        self.usage.append(usage)
        del self.usage[: -self._usage_max]
        log.info("agent call %s", json.dumps(usage, sort_keys=True))


def _sse(event: str, data: bytes) -> bytes:
    lines = data.decode("utf-8", "replace").split("\n")
    return (
        f"event: {event}\n".encode()
        + b"".join(f"data: {line}\n".encode() for line in lines)
        + b"\n"
    )


def _reported_usage(tail: bytes) -> dict[str, Any]:
    """Tokens the agent reported on its last ``FINAL_USAGE_INFO:{...}`` line, if any."""
    at = tail.rfind(_USAGE_PREFIX)
    if at < 0:
        return {}
    line = tail[at + len(_USAGE_PREFIX) :].split(b"\n", 1)[0]
    try:
        reported = json.loads(line)
    except ValueError:
        return {}
    if not isinstance(reported, dict):
        return {}
    return {
        k: reported[k]
        for k in ("input_tokens", "output_tokens", "total_tokens")
        if type(reported.get(k)) is int and reported[k] >= 0
    }
