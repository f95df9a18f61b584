"""Property tests of a real node's gateway, generated from its own OpenAPI document.

One ``formation-node run`` process serves the gateway on loopback for the whole module.
Schemathesis draws requests for every operation in ``node.gateway.openapi.openapi(ENDPOINTS)``: valid ones
(positive mode) and ones that break the schema (negative mode: wrong types, bad ids, raw
bytes, junk headers), plus its deterministic *coverage* cases (boundary values, missing
fields, unexpected methods). Each case is sent

* **signed**: we serialise the body to its exact bytes and sign method, target and body
  (``node.client.signer.sign_request``, a fresh nonce each time), so the request gets past
  ``401`` into validation and the handlers. The signer is drawn too: the account's own key,
  a key the account granted every scope acting for it (the v2 line and ``X-Act-As``), or the account's key
  with an ``X-Act-As`` that no grant backs or that is not an address. Some cases name the
  entities the fixture created (an instance, an agent, a model, the account itself), so the
  handlers that need an existing entity run as well.
* **unsigned**, as generated, and **forged** (our ``X-Message``, a wrong ``X-Signature``):
  private routes refuse both and nothing changes.

The property is the gateway's error contract (``node.gateway.http``): no request makes it
answer 5xx, every 4xx is JSON ``{"error": code, "message": text}``, and every other answer is
JSON. A failure prints the request as a ``curl`` line to replay against any node.

Bounded and reproducible: ``EXAMPLES_MAX`` examples per operation and pass, derandomised, no
shrinking (each example is a live request), fixed keys; deletes run after the other routes so
they do not hide them. About 30 s on two cores. The agent calls (``hire``, ``run_task``) are
only ever given ids that name no agent, so the node dials nothing.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from node.client.api import GatewayClient
from node.client.signer import sign_request
from node.devnet import LocalFog
from node.gateway.openapi import openapi
from node.gateway.routes import ENDPOINTS
from node.identity.keys import NodeKey

pytestmark = [pytest.mark.real, pytest.mark.slow]

_rng = random.Random(7)
KEY: Final = NodeKey(_rng.randbytes(32))  # owns the account and what the fixture creates
DELEGATE: Final = NodeKey(_rng.randbytes(32))  # granted every scope by KEY's account
STRANGER: Final = NodeKey(_rng.randbytes(32))  # granted nothing by anyone

EXAMPLES_MAX: Final = 25
REQUEST_TIMEOUT_S: Final = 10.0
GRANT_S: Final = 3600
# Headers our signature owns in the signed pass: a generated value would replace ours.
_AUTH_HEADERS: Final = frozenset({"x-message", "x-signature", "x-recovery-id", "authorization"})
# Never given the id of a real agent: a real one would make the node dial its endpoint.
_DIALS: Final = frozenset({"agentHire", "agentRunTask"})

SCHEMA: Final = schemathesis.openapi.from_dict(openapi(ENDPOINTS))
OPERATIONS: Final = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}
# Deletes last, so the routes that need the fixture's entities find them.
LABELS: Final = sorted(OPERATIONS, key=lambda label: ("delete" in label, label))

_nonces = itertools.count()


@dataclass(frozen=True)
class Signer:
    """Who signs a request, and the account it says it acts for (``X-Act-As``)."""

    key: NodeKey
    act_as: str | None = None

    def signed_as(self) -> str | None:
        """The account the signed (v2) line names: ``act_as`` when it is an address other
        than the key's own; junk stays in the header only, refused as 400 or 401."""
        if self.act_as is None or not re.fullmatch(r"0x[0-9a-f]{40}", self.act_as):
            return None
        return None if self.act_as == self.key.address else self.act_as


SIGNERS: Final = st.one_of(
    st.just(Signer(KEY)),
    st.just(Signer(DELEGATE, KEY.address)),
    st.just(Signer(KEY, STRANGER.address)),  # no grant backs it: 403
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=48).map(
        lambda act_as: Signer(KEY, act_as)
    ),
)


@dataclass
class Node:
    url: str
    http: httpx.Client
    # Path parameters naming what the fixture created, by operation label.
    known: dict[str, dict[str, str]]

    def ops(self) -> int:
        return int(self.http.get(self.url + "/v1/node/info").json()["ops"])


def _seed(url: str) -> dict[str, str]:
    """KEY's account, its grant to DELEGATE, and one instance, agent and model."""
    with GatewayClient(url, KEY, timeout_s=REQUEST_TIMEOUT_S) as client:
        client.account_create(name="fuzz", description="schemathesis")
        client.key_grant(
            DELEGATE.address,
            ["account", "instance", "agent", "model", "read", "hire"],
            int(time.time()) + GRANT_S,
        )
        made = client.instance_create("web", "NAME web\n")
        agent = client.agent_create({"name": "helper", "access": "private"})
        model = client.model_create({"name": "llm"})
    return {
        "instance": made["instance_id"],
        "build": made["build_id"],
        "agent": agent["agent_id"],
        "model": model["model_id"],
    }


def _known_parameters(ids: dict[str, str]) -> dict[str, dict[str, str]]:
    known: dict[str, dict[str, str]] = {}
    for label, operation in OPERATIONS.items():
        path = label.split(" ", 1)[1]
        if "{address}" in path:
            known[label] = {"address": KEY.address}
        elif "{id}" not in path or operation.definition.raw.get("operationId") in _DIALS:
            continue
        elif path.startswith("/v1/instance/"):
            by_build = path.endswith(("get_by_build_id", "get_instance_ips"))
            known[label] = {"id": ids["build"] if by_build else ids["instance"]}
        elif path.startswith("/v1/agents/"):
            known[label] = {"id": ids["agent"]}
        elif path.startswith("/v1/models/"):
            known[label] = {"id": ids["model"]}
    return known


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    fog = LocalFog(tmp_path_factory.mktemp("schemathesis-node"), extra_args=("--heartbeat-s", "0"))
    try:
        fog.start(0)
        url = str((fog.status(0) or {})["gateway"])
        # trust_env=False: no proxy from the environment; this traffic stays on loopback.
        with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as http:
            yield Node(url, http, _known_parameters(_seed(url)))
    finally:
        fog.stop_all()
    assert fog.procs[0].returncode == 0, fog.log(0)
    # A handler bug is answered 500 and logged: the answers above would have shown it, and the
    # log says which handler and why.
    assert "gateway handler failed" not in fog.log(0), fog.log(0)


def _cases(label: str, known: dict[str, dict[str, str]]) -> st.SearchStrategy[Any]:
    operation = OPERATIONS[label]
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if label in known:
        strategies += [
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known[label]),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=known[label]),
        ]
    return st.one_of(strategies)


def _coverage_cases(label: str) -> list[Any]:
    operation = OPERATIONS[label]
    return list(
        SCHEMA.iter_coverage_cases(
            operation,
            generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=SCHEMA.config.generation_for(operation=operation),
        )
    )


def _body_bytes(body: Any) -> bytes | None:
    """The exact bytes sent (and signed): compact UTF-8 JSON, or raw bytes as generated."""
    if isinstance(body, NotSet):
        return None
    if isinstance(body, bytes):
        return body
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: send it escaped instead
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def _build(node: Node, case: Any, signer: Signer | None, *, tamper: bool = False) -> httpx.Request:
    """The request for ``case``; ``tamper`` signs a body one byte longer than the one sent."""
    content = _body_bytes(case.body)
    headers = {
        name: value
        for name, value in (case.headers or {}).items()
        if signer is None or name.lower() not in _AUTH_HEADERS
    }
    if content is not None:
        headers.setdefault("Content-Type", case.media_type or "application/json")
    request = node.http.build_request(
        case.method,
        node.url + case.formatted_path,
        params=case.query or None,
        content=content,
        headers=headers,
    )
    if signer is not None:
        # Sign what goes on the wire: the final target (percent-encoded, query included).
        target = request.url.raw_path.decode("ascii")
        nonce = f"schemathesis{next(_nonces):08d}"
        request.headers.update(
            sign_request(
                signer.key,
                case.method,
                target,
                (content or b"") + (b" " if tamper else b""),
                int(time.time()),
                nonce,
                signer.signed_as(),
            )
        )
        if signer.act_as is not None:
            request.headers["X-Act-As"] = signer.act_as
    return request


def _forged(node: Node, case: Any) -> list[httpx.Request]:
    """KEY's signature made useless: one over other bytes, and one that recovers no key (r = 0).

    Not generated junk: nearly any 65 bytes recover to *some* address, and a request signed
    that way is genuinely signed, by a key nobody holds, so the gateway may rightly accept it
    (that made this test depend on the clock inside the signed line).
    """
    other_bytes = _build(node, case, Signer(KEY), tamper=True)
    no_key = _build(node, case, Signer(KEY))
    no_key.headers["X-Signature"] = "0x" + "00" * 32 + no_key.headers["X-Signature"][66:]
    return [other_bytes, no_key]


def _replay(request: httpx.Request) -> str:
    parts = ["curl", "-X", request.method, str(request.url)]
    for name, value in request.headers.items():
        if name.lower() not in ("host", "content-length", "accept-encoding", "connection"):
            parts += ["-H", f"{name}: {value}"]
    if request.content:
        parts += ["--data-binary", request.content.decode("utf-8", "backslashreplace")]
    return shlex.join(parts)


def _send(node: Node, request: httpx.Request) -> httpx.Response:
    """Send, and check the error contract."""
    response = node.http.send(request)
    status = response.status_code
    where = f"{status} {response.text[:500]!r}\nreplay: {_replay(request)}"
    assert status < 500, f"the gateway failed: {where}"
    try:
        body = response.json()
    except ValueError:
        pytest.fail(f"an answer whose body is not JSON: {where}")
    if status >= 400:
        assert isinstance(body, dict), where
        assert isinstance(body.get("error"), str), where
        assert isinstance(body.get("message"), str), where
        assert body["message"], where
    return response


def _refuses_unsigned(label: str) -> bool:
    return bool(OPERATIONS[label].definition.raw.get("security") == [{"signedRequest": []}])


def _assert_refused(label: str, request: httpx.Request, response: httpx.Response) -> None:
    if _refuses_unsigned(label):
        # No route (404/405) and an over-long body (413) are refused before the signature is
        # looked at; everything else must be 401.
        assert response.status_code in (401, 404, 405, 413), _replay(request)


_SETTINGS: Final = settings(
    max_examples=EXAMPLES_MAX,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: every example is a live request
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


@pytest.mark.parametrize("label", LABELS)
def test_signed_requests_never_make_the_gateway_fail(node: Node, label: str) -> None:
    @_SETTINGS
    @given(case=_cases(label, node.known), signer=SIGNERS)
    def signed(case: Any, signer: Signer) -> None:
        _send(node, _build(node, case, signer))

    signed()


@pytest.mark.parametrize("label", LABELS)
def test_unsigned_and_forged_requests_are_refused_and_change_nothing(
    node: Node, label: str
) -> None:
    ops_before = node.ops()

    @_SETTINGS
    @given(case=_cases(label, node.known))
    def unsigned(case: Any) -> None:
        for request in (_build(node, case, None), *_forged(node, case)):
            _assert_refused(label, request, _send(node, request))

    unsigned()
    assert node.ops() == ops_before, "an unsigned or forged request changed the node's state"


@pytest.mark.parametrize("label", LABELS)
def test_coverage_cases_never_make_the_gateway_fail(node: Node, label: str) -> None:
    cases = _coverage_cases(label)
    assert cases, f"schemathesis made no coverage cases for {label}"
    for case in cases:
        _send(node, _build(node, case, Signer(KEY)))
        unsigned = _build(node, case, None)
        _assert_refused(label, unsigned, _send(node, unsigned))
