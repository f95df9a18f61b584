"""The gateway checks a Formfile before it submits anything: 400 ``invalid_formfile`` with every
error, nothing replicated; a valid one goes through as before. Limits follow the node's network."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.pack.formfile import DEVNET, FormfileError, parse
from tests.gateway.test_app import ALICE, Gateway
from tests.gateway.test_app import gateway as gateway

BROKEN = "NAME web\nVCPU 999\nFROM debian\nEXPOSE 70000\n"
CONTEXT = "ab" * 32
OK_DIR = Path(__file__).parent.parent / "data" / "formfiles" / "ok"


def _expected_errors(text: str) -> list[dict[str, object]]:
    with pytest.raises(FormfileError) as caught:
        parse(text, path="Formfile")
    return [
        {"path": d.path, "line": d.line, "col": d.col, "message": d.message}
        for d in caught.value.diagnostics
    ]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/builds/create", {"name": "web", "formfile": BROKEN, "context": CONTEXT}),
        ("/v1/instance/create", {"name": "web", "formfile": BROKEN}),
    ],
)
async def test_an_invalid_formfile_is_a_400_listing_every_error_and_changes_nothing(
    gateway: Gateway,
    path: str,
    body: dict[str, str],
) -> None:
    before = gateway.ops
    reply = await gateway.send("POST", path, body, key=ALICE)
    assert reply.status_code == 400, reply.text
    answer = reply.json()
    assert answer["error"] == "invalid_formfile"
    expected = _expected_errors(BROKEN)
    assert answer["errors"] == expected
    assert [e["line"] for e in answer["errors"]] == [2, 3, 4]
    first = expected[0]
    assert (
        answer["message"] == f"{first['path']}:{first['line']}:{first['col']}: {first['message']}"
    )
    assert gateway.ops == before
    assert gateway.replica.state.builds(ALICE.address) == []
    assert gateway.replica.state.instances(ALICE.address) == []


async def test_a_valid_formfile_is_built_as_before(gateway: Gateway) -> None:
    text = (OK_DIR / "hello-server.Formfile").read_text()
    body = {"name": "hello-server", "formfile": text, "context": CONTEXT}
    reply = await gateway.send("POST", "/v1/builds/create", body, key=ALICE)
    assert reply.status_code == 201, reply.text
    assert reply.json()["build_id"]
    assert [b["name"] for b in gateway.replica.state.builds(ALICE.address)] == ["hello-server"]


async def test_the_limits_are_the_nodes_networks(
    gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The seed's llm-model-deployment asks for 4 vCPUs, 16 GB and 50 GB: fine on mainnet,
    # refused on a devnet node, on the lines that ask.
    text = (OK_DIR / "llm-model-deployment.Formfile").read_text()
    parse(text)  # valid under mainnet, the default for a network this code does not know
    monkeypatch.setattr(gateway.replica, "network", "devnet")
    body = {"name": "llm", "formfile": text}
    reply = await gateway.send("POST", "/v1/instance/create", body, key=ALICE)
    assert reply.status_code == 400, reply.text
    with pytest.raises(FormfileError) as caught:
        parse(text, limits=DEVNET)
    assert [e["line"] for e in reply.json()["errors"]] == [d.line for d in caught.value.diagnostics]
    assert len(reply.json()["errors"]) == 3
    assert gateway.replica.state.instances(ALICE.address) == []


async def test_a_formfile_that_is_not_a_string_is_left_to_the_payload_checks(
    gateway: Gateway,
) -> None:
    reply = await gateway.send(
        "POST", "/v1/instance/create", {"name": "web", "formfile": 5}, key=ALICE
    )
    assert (reply.status_code, reply.json()["error"], reply.json()["field"]) == (
        400,
        "invalid_payload",
        "formfile",
    )
    assert gateway.ops == 0


async def test_a_formfile_with_hundreds_of_errors_lists_the_first_100_then_a_count(
    gateway: Gateway,
) -> None:
    text = "NAME web\n" + "NOPE x\n" * 150
    reply = await gateway.send(
        "POST", "/v1/instance/create", {"name": "web", "formfile": text}, key=ALICE
    )
    assert reply.status_code == 400, reply.text
    errors = reply.json()["errors"]
    assert errors == _expected_errors(text)
    assert len(errors) == 101
    assert errors[-1]["message"] == "and 50 more errors"
    assert gateway.ops == 0
