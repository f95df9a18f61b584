"""The DNS routes through the gateway: an owner adds, removes and lists a vanity name; a name
that would not count (someone else's build, a domain another account holds, a bad label) is
refused with what to fix and changes nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from node.ledger.builds import build_digest
from node.ledger.op import sign_op
from tests.gateway.test_app import ALICE, BOB, Gateway, gateway  # noqa: F401 (the fixture)
from tests.helpers import NET


@pytest.fixture
async def gw(gateway: Gateway) -> Gateway:  # noqa: F811 (test_app's fixture)
    return gateway


FORMFILE = "NAME web\n"


def _build(gw: Gateway, owner: Any) -> str:
    op = sign_op(
        owner,
        NET,
        (int(time.time() * 1000), 0),
        "build.request",
        {"name": "web", "formfile": FORMFILE},
    )
    assert len(gw.replica.submit([(op.body, op.sig)], int(time.time() * 1000)).accepted) == 1
    return build_digest(owner.address, FORMFILE, "")


async def test_an_owner_adds_lists_and_removes_a_name(gw: Gateway) -> None:
    build_id = _build(gw, ALICE)
    added = await gw.send(
        "POST", "/v1/dns/add", {"domain": "Shop", "build_id": build_id}, key=ALICE
    )
    assert added.status_code == 200, added.text
    assert (added.json()["domain"], added.json()["build_id"]) == ("shop.fog", build_id)
    listed = await gw.send("GET", "/v1/dns/list", None, key=None)
    assert listed.json() == {"count": 1, "names": [{"domain": "shop.fog", "build_id": build_id}]}
    removed = await gw.send("POST", "/v1/dns/remove", {"domain": "shop"}, key=ALICE)
    assert (removed.status_code, removed.json()["build_id"]) == (200, None)
    assert (await gw.send("GET", "/v1/dns/list", None, key=None)).json()["count"] == 0


async def test_names_that_would_not_count_are_refused_and_change_nothing(gw: Gateway) -> None:
    alice_build, bob_build = _build(gw, ALICE), _build(gw, BOB)
    assert (
        await gw.send("POST", "/v1/dns/add", {"domain": "shop", "build_id": alice_build}, key=ALICE)
    ).status_code == 200
    before = gw.ops
    foreign = await gw.send(
        "POST", "/v1/dns/add", {"domain": "blog", "build_id": alice_build}, key=BOB
    )
    assert (foreign.status_code, foreign.json()["field"]) == (403, "build_id")
    held = await gw.send(
        "POST", "/v1/dns/add", {"domain": "shop.fog", "build_id": bob_build}, key=BOB
    )
    assert (held.status_code, held.json()["error"]) == (409, "exists")
    assert ALICE.address in held.json()["message"]
    bad = await gw.send(
        "POST", "/v1/dns/add", {"domain": "x.node.fog", "build_id": bob_build}, key=BOB
    )
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_payload")
    assert "fog's own" in bad.json()["message"]
    assert gw.ops == before
