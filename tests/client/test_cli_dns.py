"""``form dns``: add, remove and list vanity names; a bad domain is a usage error, nothing sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.client.fake_gateway import FakeGateway, answer
from tests.client.test_cli import (  # noqa: F401 (fixtures)
    ALICE,
    BUILD,
    OP,
    alice,
    form,
    gateway,
    isolated,
    table,
)


def test_dns_add_remove_and_list(alice: Path, gateway: FakeGateway, form: Any) -> None:  # noqa: F811
    gateway.on(
        "POST", "/v1/dns/add", answer(200, {"op_id": OP, "domain": "shop.fog", "build_id": BUILD})
    )
    ran = form("dns", "add", "--domain", "Shop", "--build-id", BUILD.upper())
    assert (ran.status, ran.out) == (0, f"shop.fog -> build {BUILD} (op {OP})\n")
    assert gateway.last.json == {"domain": "shop.fog", "build_id": BUILD}
    assert gateway.last.signer == ALICE.address
    gateway.on("POST", "/v1/dns/remove", answer(200, {"op_id": OP, "domain": "shop.fog"}))
    ran = form("dns", "remove", "--domain", "shop.fog")
    assert (ran.status, ran.out) == (0, f"removed shop.fog (op {OP})\n")
    assert gateway.last.json == {"domain": "shop.fog"}
    names = {"count": 1, "names": [{"domain": "shop.fog", "build_id": BUILD}]}
    gateway.on("GET", "/v1/dns/list", answer(200, names))
    ran = form("dns", "list")
    assert ran.status == 0
    assert ran.out == table("DOMAIN    BUILD", f"shop.fog  {BUILD}")
    assert "x-signer" not in gateway.last.headers, "the list is public"


def test_a_bad_domain_is_a_usage_error_and_sends_nothing(
    alice: Path,  # noqa: F811
    gateway: FakeGateway,  # noqa: F811
    form: Any,  # noqa: F811
) -> None:
    ran = form("dns", "add", "--domain", "web.instance.fog", "--build-id", BUILD)
    assert ran.status == 2
    assert "fog's own" in ran.err
    assert gateway.seen == []
