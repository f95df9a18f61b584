"""A synchronous client of the node's HTTP gateway: one method per route.

Theory of operation
-------------------
Everything goes through ``GatewayClient.request`` (or ``open_stream`` for the agent routes,
whose answers arrive in chunks). It serialises the JSON body once, compactly, builds the
``httpx`` request, and only then signs: the signed path is the request's final target
(``url.raw_path``, percent-encoded, query included) and the signed body is the request's
content, so what the gateway hashes is by construction what we signed (``node.client.signer``).
Public routes go unsigned; signed routes need a key and fail here, before any traffic, without
one. A signed request also carries ``X-Signer`` (the key's address), so the gateway refuses a
signature by any other key as ``401 wrong_signer``; ``act_as`` adds ``X-Act-As`` so a delegate
key can say which account it acts for (``X-Signer`` stays the delegate's own address).

Every route is sent under ``/v1`` (the gateway also serves them unprefixed; the upstream
clients use ``/v1``). A base URL given with a trailing ``/v1`` is accepted as well.

Failures are one of three ``ClientError`` subclasses, each with a message fit to show a user:

* ``ApiError``: the gateway answered 4xx/5xx. ``code`` is the stable code from its JSON body
  (``{"error", "message", "field"?}``), or ``http_<status>`` when the body is not that shape
  (a proxy's error page, say).
* ``GatewayUnreachable``: nothing accepted the connection at the base URL.
* ``ClientError`` itself: a timeout, a broken connection, or an answer that is not JSON.

The clock and the nonce source are constructor arguments, and tests pass an
``httpx.MockTransport``; nothing else here reads the environment.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx

from node import __version__
from node.client.signer import sign_request
from node.identity.keys import NodeKey, normalize_address

__all__ = [
    "API_PREFIX",
    "TIMEOUT_S_DEFAULT",
    "ApiError",
    "ClientError",
    "GatewayClient",
    "GatewayUnreachable",
    "Streamed",
    "new_nonce",
]

API_PREFIX: Final = "/v1"
TIMEOUT_S_DEFAULT: Final = 10.0
# An agent may think for a long while before its first byte, and between chunks; the request
# timeout for ordinary routes would cut it off. Still bounded, so a wedged agent ends the call.
STREAM_READ_TIMEOUT_S_DEFAULT: Final = 300.0
# An error body is shown to a user; a proxy's HTML page is cut to something readable.
_ERROR_TEXT_CHARS_MAX: Final = 200


def new_nonce() -> str:
    """16 URL-safe characters (96 random bits): the default nonce for a signed request."""
    return secrets.token_urlsafe(12)


class ClientError(Exception):
    """The request did not produce an answer we can use; ``str()`` says why, in one line."""


class ApiError(ClientError):
    """The gateway refused the request (HTTP 4xx/5xx)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        # The whole JSON error body: some refusals carry numbers (a 402's required/available).
        self.details = details or {}

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, code={self.code!r}, message={self.message!r}, field={self.field!r})"


class GatewayUnreachable(ClientError):
    """Nothing answers at the gateway's address (refused, unknown host, no route)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"no gateway answers at {url} ({reason})")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class Streamed:
    """A streamed answer: its status, content type and the body in chunks as they arrive."""

    status: int
    content_type: str | None
    chunks: Iterator[bytes]


def _segment(value: str) -> str:
    # Ids come from users and other replicas: never let one add a path segment or a query.
    return quote(value, safe="")


def _compact(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _some(**fields: Any) -> dict[str, Any]:
    """The fields that were given: an omitted field is absent, not null, in a request body."""
    return {name: value for name, value in fields.items() if value is not None}


def _base_url(base_url: str) -> str:
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"the gateway URL {base_url!r} is not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"the gateway URL must look like http://HOST:PORT, got {base_url!r}")
    text = str(url).rstrip("/")
    if text.endswith(API_PREFIX):
        text = text[: -len(API_PREFIX)]
    return text


class GatewayClient:
    """The gateway's routes as methods. Use as a context manager, or call ``close()``.

    Args:
        base_url: the gateway, e.g. ``http://127.0.0.1:3004``.
        key: signs the requests of signed routes; ``None`` allows public routes only.
        timeout_s: connect, read and write timeout of every request.
        clock: unix time in seconds (``time.time``); the signed timestamp.
        act_as: the account a delegate key acts for (``X-Act-As``), if not its own.
        transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``).
        nonce: the source of nonces (``new_nonce``).
    """

    def __init__(
        self,
        base_url: str,
        key: NodeKey | None = None,
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        clock: Callable[[], float] = time.time,
        act_as: str | None = None,
        transport: httpx.BaseTransport | None = None,
        nonce: Callable[[], str] = new_nonce,
    ) -> None:
        self.base_url = _base_url(base_url)
        self.key = key
        self.timeout_s = timeout_s
        self.act_as = None if act_as is None else normalize_address(act_as)
        self._clock = clock
        self._nonce = nonce
        self._node_address: str | None = None
        self._http = httpx.Client(
            transport=transport,
            timeout=timeout_s,
            headers={"User-Agent": f"form/{__version__}", "Accept": "application/json"},
            # A gateway never redirects; following one would send a signed request elsewhere.
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------- plumbing

    def _build(
        self,
        method: str,
        path: str,
        json_body: Any,
        signed: bool,
        timeout: httpx.Timeout | None,
        raw: tuple[bytes, dict[str, str]] | None = None,
    ) -> httpx.Request:
        if signed and self.key is None:
            raise ClientError(
                f"{method} {path} must be signed, and this client has no key; give it one"
            )
        if raw is not None:  # a raw body (a blob) with its own headers; signed as sent
            body, headers = raw
        else:
            body = b"" if json_body is None else _compact(json_body)
            headers = {"Content-Type": "application/json"} if json_body is not None else {}
        request = self._http.build_request(
            method,
            self.base_url + API_PREFIX + path,
            content=body or None,
            headers=headers,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        if signed and self.key is not None:
            target, now_s = request.url.raw_path.decode("ascii"), int(self._clock())
            act_as = None if self.act_as == self.key.address else self.act_as
            signature = sign_request(self.key, method, target, body, now_s, self._nonce(), act_as)
            request.headers.update(signature)
            # Names the key that must have signed, so a signature by any other key is refused
            # as 401 wrong_signer. Under act_as the signed v2 line (and X-Act-As, which must
            # agree) says whose account, X-Signer whose signature.
            request.headers["X-Signer"] = self.key.address
            if self.act_as is not None:
                request.headers["X-Act-As"] = self.act_as
        return request

    def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        what = f"{request.method} {request.url.raw_path.decode('ascii')}"
        try:
            return self._http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise GatewayUnreachable(self.base_url, str(exc) or type(exc).__name__) from None
        except httpx.TimeoutException:
            raise ClientError(
                f"the gateway at {self.base_url} did not answer {what} in time"
            ) from None
        except httpx.TransportError as exc:
            raise ClientError(
                f"the connection to the gateway at {self.base_url} broke during {what}: {exc}"
            ) from None

    @staticmethod
    def _error(response: httpx.Response) -> ApiError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            message = body.get("message")
            field = body.get("field")
            return ApiError(
                status,
                body["error"],
                message if isinstance(message, str) and message else body["error"],
                field if isinstance(field, str) else None,
                body,
            )
        text = " ".join(response.text.split())[:_ERROR_TEXT_CHARS_MAX]
        return ApiError(status, f"http_{status}", text or response.reason_phrase or "no message")

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        signed: bool = True,
    ) -> Any:
        """Send ``method`` to ``/v1`` + ``path`` and return the decoded JSON answer.

        ``json_body`` (any JSON value) is sent compactly with ``Content-Type:
        application/json``; ``None`` sends no body. Raises ``ApiError`` for a refusal,
        ``GatewayUnreachable`` or ``ClientError`` otherwise.
        """
        request = self._build(method, path, json_body, signed, None)
        response = self._send(request, stream=False)
        if response.status_code >= 400:
            raise self._error(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"the server at {self.base_url} answered {method} {API_PREFIX}{path} with "
                f"something that is not JSON ({response.headers.get('content-type', 'no content type')}); "
                "is this a formation node's gateway?"
            ) from None

    @contextlib.contextmanager
    def open_stream(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        signed: bool = True,
        *,
        read_timeout_s: float = STREAM_READ_TIMEOUT_S_DEFAULT,
    ) -> Iterator[Streamed]:
        """Like ``request``, but the answer's body comes as chunks while the context is open.

        ``read_timeout_s`` bounds the wait for each chunk (the first included).
        """
        timeout = httpx.Timeout(self.timeout_s, read=read_timeout_s)
        request = self._build(method, path, json_body, signed, timeout)
        response = self._send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                raise self._error(response)
            yield Streamed(
                response.status_code,
                response.headers.get("content-type"),
                self._chunks(response, f"{method} {API_PREFIX}{path}"),
            )
        finally:
            response.close()

    def _chunks(self, response: httpx.Response, what: str) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes()
        except httpx.TimeoutException:
            raise ClientError(
                f"the answer to {what} stalled: no data for a while from {self.base_url}"
            ) from None
        except httpx.TransportError as exc:
            raise ClientError(f"the answer to {what} broke off: {exc}") from None

    # ---------------------------------------------------------------------- public routes

    def ping(self) -> Any:
        return self.request("GET", "/ping", signed=False)

    def health(self) -> Any:
        return self.request("GET", "/health", signed=False)

    def openapi(self) -> Any:
        return self.request("GET", "/openapi.json", signed=False)

    def node_info(self) -> Any:
        return self.request("GET", "/node/info", signed=False)

    def node_list(self) -> Any:
        return self.request("GET", "/node/list", signed=False)

    # ---------------------------------------------------------------------------- accounts

    def account_create(self, name: str | None = None, description: str | None = None) -> Any:
        return self.request("POST", "/account/create", _some(name=name, description=description))

    def account_update(self, name: str | None = None, description: str | None = None) -> Any:
        return self.request("POST", "/account/update", _some(name=name, description=description))

    def account_delete(self) -> Any:
        return self.request("POST", "/account/delete", {})

    def account_get(self, address: str) -> Any:
        return self.request("GET", f"/account/{_segment(address)}/get")

    def account_list(self) -> Any:
        return self.request("GET", "/account/list")

    # --------------------------------------------------------------------------- instances

    def instance_create(
        self,
        name: str,
        formfile: str,
        *,
        description: str | None = None,
        resources: Mapping[str, int] | None = None,
    ) -> Any:
        body = _some(
            name=name,
            formfile=formfile,
            description=description,
            resources=None if resources is None else dict(resources),
        )
        return self.request("POST", "/instance/create", body)

    def instance_list(self) -> Any:
        return self.request("GET", "/instance/list")

    def instance_get(self, instance_id: str) -> Any:
        return self.request("GET", f"/instance/{_segment(instance_id)}/get")

    def instance_get_by_build_id(self, build_id: str) -> Any:
        return self.request("GET", f"/instance/{_segment(build_id)}/get_by_build_id")

    def instance_ips(self, build_id: str) -> Any:
        return self.request("GET", f"/instance/{_segment(build_id)}/get_instance_ips")

    def instance_stop(self, instance_id: str) -> Any:
        return self.request("POST", f"/instance/{_segment(instance_id)}/stop", {})

    def instance_start(self, instance_id: str) -> Any:
        return self.request("POST", f"/instance/{_segment(instance_id)}/start", {})

    def instance_delete(self, instance_id: str) -> Any:
        return self.request("POST", f"/instance/{_segment(instance_id)}/delete", {})

    def instance_reboot(self, instance_id: str) -> Any:
        return self.request("POST", f"/instance/{_segment(instance_id)}/reboot", {})

    def instance_logs(self, instance_id: str, *, slot: int = 0, bytes_max: int = 65536) -> Any:
        query = f"?slot={int(slot)}&bytes={int(bytes_max)}"
        return self.request("GET", f"/instance/{_segment(instance_id)}/logs{query}")

    def instance_metrics(self, instance_id: str) -> Any:
        return self.request("GET", f"/instance/{_segment(instance_id)}/metrics")

    # ------------------------------------------------------------------ agents and models

    def agent_list(self, *, signed: bool = False) -> Any:
        """Public agents; ``signed`` also shows the private ones this key may use."""
        return self.request("GET", "/agents", signed=signed)

    def agent_get(self, agent_id: str, *, signed: bool = False) -> Any:
        return self.request("GET", f"/agents/{_segment(agent_id)}", signed=signed)

    def agent_create(self, spec: Mapping[str, Any]) -> Any:
        return self.request("POST", "/agents/create", dict(spec))

    def agent_update(self, spec: Mapping[str, Any]) -> Any:
        return self.request("POST", "/agents/update", dict(spec))

    def agent_delete(self, name: str) -> Any:
        return self.request("POST", "/agents/delete", {"name": name})

    def agent_allow(self, agent_id: str, address: str) -> Any:
        return self.request("POST", f"/agents/{_segment(agent_id)}/allow", {"address": address})

    def agent_disallow(self, agent_id: str, address: str) -> Any:
        return self.request("POST", f"/agents/{_segment(agent_id)}/disallow", {"address": address})

    def open_agent_hire(
        self,
        agent_id: str,
        body: Any,
        *,
        read_timeout_s: float = STREAM_READ_TIMEOUT_S_DEFAULT,
    ) -> contextlib.AbstractContextManager[Streamed]:
        """Hire an agent: ``body`` goes to its endpoint, its answer streams back."""
        return self.open_stream(
            "POST", f"/agents/{_segment(agent_id)}/hire", body, read_timeout_s=read_timeout_s
        )

    def open_agent_run_task(
        self,
        agent_id: str,
        task: Any,
        *,
        read_timeout_s: float = STREAM_READ_TIMEOUT_S_DEFAULT,
    ) -> contextlib.AbstractContextManager[Streamed]:
        """Run one task on an agent; its answer streams back."""
        return self.open_stream(
            "POST", f"/agents/{_segment(agent_id)}/run_task", task, read_timeout_s=read_timeout_s
        )

    def model_list(self, *, signed: bool = False) -> Any:
        """Public models; ``signed`` also shows the private ones this key may use."""
        return self.request("GET", "/models", signed=signed)

    def model_get(self, model_id: str, *, signed: bool = False) -> Any:
        return self.request("GET", f"/models/{_segment(model_id)}", signed=signed)

    def model_create(self, spec: Mapping[str, Any]) -> Any:
        return self.request("POST", "/models/create", dict(spec))

    def model_update(self, spec: Mapping[str, Any]) -> Any:
        return self.request("POST", "/models/update", dict(spec))

    def model_delete(self, name: str) -> Any:
        return self.request("POST", "/models/delete", {"name": name})

    def model_allow(self, model_id: str, address: str) -> Any:
        return self.request("POST", f"/models/{_segment(model_id)}/allow", {"address": address})

    def model_disallow(self, model_id: str, address: str) -> Any:
        return self.request("POST", f"/models/{_segment(model_id)}/disallow", {"address": address})

    # ------------------------------------------------------------------------ delegate keys

    def key_grant(
        self,
        delegate: str,
        scopes: Sequence[str],
        expires_s: int,
        *,
        spend_cap: int | None = None,
        label: str | None = None,
    ) -> Any:
        body = _some(
            delegate=delegate,
            scopes=list(scopes),
            expires_s=expires_s,
            spend_cap=spend_cap,
            label=label,
        )
        return self.request("POST", "/key/grant", body)

    def key_revoke(self, delegate: str) -> Any:
        return self.request("POST", "/key/revoke", {"delegate": delegate})

    # ---------------------------------------------------------------------------- credits

    def node_address(self) -> str:
        """The address of the gateway's node (``GET /node/info``), asked once per client: a
        billing order must name the node that carries it out."""
        if self._node_address is None:
            info = self.node_info()
            address = info.get("address") if isinstance(info, dict) else None
            if not isinstance(address, str):
                raise ClientError(f"the gateway at {self.base_url} did not say its node's address")
            self._node_address = normalize_address(address)
        return self._node_address

    def _order(self, route: str, to: str, amount: int, key: str, node: str | None) -> Any:
        node = node if node is not None else self.node_address()
        body = {"to": to, "amount": amount, "idempotency_key": key, "node": node}
        return self.request("POST", route, body)

    def credits_mint(
        self, to: str, amount: int, idempotency_key: str, *, node: str | None = None
    ) -> Any:
        """Mint (issuers only) through ``node``, by default the gateway's own; a retry with
        the same key answers the original outcome (``replayed``)."""
        return self._order("/billing/credits/mint", to, amount, idempotency_key, node)

    def credits_transfer(
        self, to: str, amount: int, idempotency_key: str, *, node: str | None = None
    ) -> Any:
        """As ``credits_mint``, from the signer's account; 402 ``details``: required, available."""
        return self._order("/billing/credits/transfer", to, amount, idempotency_key, node)

    def credits_balance(self, address: str) -> Any:
        return self.request("GET", f"/billing/balance/{_segment(address)}", signed=False)

    # ------------------------------------------------------------------------------ blobs

    def blobs_missing(self, digests: Sequence[str]) -> list[str]:
        """Which of ``digests`` (at most 1000) the node lacks."""
        answer = self.request("POST", "/blobs/missing", {"digests": list(digests)})
        missing = answer.get("missing") if isinstance(answer, dict) else None
        if not isinstance(missing, list) or not all(isinstance(d, str) for d in missing):
            raise ClientError(f"the gateway at {self.base_url} answered /blobs/missing oddly")
        return missing

    def blob_put(self, digest: str, body: bytes, *, encoding: str | None = None) -> Any:
        """Upload one blob; ``body`` as sent (zstd-compressed when ``encoding`` is "zstd")."""
        headers = {"Content-Type": "application/octet-stream"}
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        request = self._build(
            "PUT", f"/blobs/{_segment(digest)}", None, True, None, raw=(body, headers)
        )
        response = self._send(request, stream=False)
        if response.status_code >= 400:
            raise self._error(response)
        return response.json()

    def blob_batch(self, body: bytes, *, encoding: str | None = None) -> Any:
        """Upload many small blobs at once (``POST /blobs/batch``: a JSON line of
        ``[digest, size]`` pairs, then their bytes); ``body`` as sent."""
        headers = {"Content-Type": "application/octet-stream"}
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        request = self._build("POST", "/blobs/batch", None, True, None, raw=(body, headers))
        response = self._send(request, stream=False)
        if response.status_code >= 400:
            raise self._error(response)
        return response.json()

    def blob_get(self, digest: str) -> bytes:
        """The raw bytes of a blob the node holds."""
        request = self._build("GET", f"/blobs/{_segment(digest)}", None, True, None)
        response = self._send(request, stream=False)
        if response.status_code >= 400:
            raise self._error(response)
        return response.content

    def key_list(self) -> Any:
        return self.request("GET", "/key/list")

    # --------------------------------------------------------------------------- dns names

    def dns_add(self, domain: str, build_id: str) -> Any:
        """Point ``domain`` (served as ``<domain>.fog``) at one of the signer's builds."""
        return self.request("POST", "/dns/add", {"domain": domain, "build_id": build_id})

    def dns_remove(self, domain: str) -> Any:
        return self.request("POST", "/dns/remove", {"domain": domain})

    def dns_list(self) -> Any:
        return self.request("GET", "/dns/list", signed=False)
