"""``form credits``: mint, transfer and balance; bad options are usage errors that send nothing;
a 402 is exit 1 with the gateway's numbers; ``--json`` prints the gateway's JSON. About 1 s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.client.cli import main
from tests.client.fake_gateway import FakeGateway, answer
from tests.client.test_cli import (  # noqa: F401 (fixtures)
    ALICE,
    OP,
    alice,
    form,
    gateway,
    isolated,
)

BOB = "0x" + "b0" * 20
NODE = "0x" + "ef" * 20


def _outcome(**over: Any) -> dict[str, Any]:
    return {
        "op_id": OP,
        "node": NODE,
        "seq": 3,
        "kind": "billing.transfer",
        "from": ALICE.address,
        "to": BOB,
        "amount": 30,
        "idempotency_key": "pay-1",
        "replayed": False,
        **over,
    }


def test_transfer_names_the_gateway_s_node_and_says_the_key(
    alice: Path,  # noqa: F811
    gateway: FakeGateway,  # noqa: F811
    form: Any,  # noqa: F811
) -> None:
    gateway.on("GET", "/v1/node/info", answer(200, {"address": NODE}))
    gateway.on("POST", "/v1/billing/credits/transfer", answer(200, _outcome()))
    ran = form("credits", "transfer", "--to", BOB, "--amount", "30", "--idempotency-key", "pay-1")
    assert ran.status == 0, ran.err
    assert ran.out == (
        f"moved 30 credits to {BOB} (op {OP}, node {NODE}, seq 3)\n"
        "idempotency key pay-1 (reuse it to retry safely)\n"
    )
    sent = gateway.last.json
    assert sent == {"to": BOB, "amount": 30, "idempotency_key": "pay-1", "node": NODE}
    assert gateway.last.signer == ALICE.address


def test_a_fresh_key_is_made_when_none_is_given_and_node_may_be_named(
    alice: Path,  # noqa: F811
    gateway: FakeGateway,  # noqa: F811
    form: Any,  # noqa: F811
) -> None:
    gateway.on("POST", "/v1/billing/credits/mint", answer(200, _outcome(kind="billing.mint")))
    ran = form("credits", "mint", "--to", BOB, "--amount", "5", "--node", NODE, "--json")
    assert ran.status == 0, ran.err
    assert json.loads(ran.out)["kind"] == "billing.mint"
    sent = gateway.last.json
    assert sent["idempotency_key"].startswith("form-")
    assert len(sent["idempotency_key"]) == len("form-") + 16
    assert [seen.target for seen in gateway.seen] == ["/v1/billing/credits/mint"]  # no look-up


def test_a_replay_says_nothing_changed(
    alice: Path,  # noqa: F811
    gateway: FakeGateway,  # noqa: F811
    form: Any,  # noqa: F811
) -> None:
    gateway.on("POST", "/v1/billing/credits/transfer", answer(200, _outcome(replayed=True)))
    ran = form("credits", "transfer", "--to", BOB, "--amount", "30", "--node", NODE)
    assert ran.status == 0, ran.err
    assert ran.out.startswith("already done (key pay-1): nothing changed\n")
    assert "reuse it" not in ran.out


def test_a_402_is_exit_1_with_the_numbers(
    alice: Path,  # noqa: F811
    gateway: FakeGateway,  # noqa: F811
    form: Any,  # noqa: F811
) -> None:
    refusal = {
        "error": "insufficient_credits",
        "message": f"{ALICE.address} needs 31 credits; 30 are available in all",
        "field": "amount",
        "required": 31,
        "available": 30,
        "available_here": 30,
    }
    gateway.on("POST", "/v1/billing/credits/transfer", answer(402, refusal))
    ran = form("credits", "transfer", "--to", BOB, "--amount", "31", "--node", NODE)
    assert ran.status == 1
    assert "needs 31 credits; 30 are available" in ran.err
    assert "(insufficient_credits)" in ran.err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--to", "bob", "--amount", "3"], "--to"),
        (["--to", BOB, "--amount", "0"], "--amount"),
        (["--to", BOB, "--amount", "1.5"], "--amount"),
        (["--to", BOB, "--amount", "-2"], "--amount"),
        (["--to", BOB, "--amount", "3", "--node", "nope"], "--node"),
    ],
)
def test_bad_options_are_usage_errors_that_send_nothing(
    alice: Path,  # noqa: F811
    gateway: FakeGateway,  # noqa: F811
    form: Any,  # noqa: F811
    argv: list[str],
    says: str,
) -> None:
    ran = form("credits", "transfer", *argv)
    assert ran.status == 2
    assert says in ran.err
    assert gateway.seen == []


def test_balance_is_public_and_defaults_to_your_account(
    alice: Path,  # noqa: F811
    gateway: FakeGateway,  # noqa: F811
    form: Any,  # noqa: F811
) -> None:
    mine = {"address": ALICE.address, "available": 70, "held": 0, "spent": 30, "earned": 0}
    gateway.on("GET", f"/v1/billing/balance/{ALICE.address}", answer(200, mine))
    ran = form("credits", "balance")
    assert ran.status == 0, ran.err
    assert "available  70" in ran.out
    assert gateway.last.signer is None
    gateway.on("GET", f"/v1/billing/balance/{BOB}", answer(200, {**mine, "address": BOB}))
    ran = form("credits", "balance", "--address", BOB, "--json")
    assert json.loads(ran.out)["address"] == BOB


def test_help_names_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["credits", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("mint", "transfer", "balance"))
    assert main(["credits", "mint", "--help"]) == 0
    assert "issuer-keystore.json" in capsys.readouterr().out
