"""Credits end to end on three real ``formation-node run`` processes on loopback.

The well-known local issuer (``bootstrap/local/issuer-keystore.json``, password ``local``)
mints to alice through node A; alice pays bob through node B, which holds none of her rights
and must get them from A over libp2p (``/formation/rights/1.0.0``) before it carries the
transfer out; every node then shows the same balances. An overdraw through node C is refused
with 402 and the numbers, and changes nothing on any node; a replayed transfer (re-signed, to
the same node and to another) answers the original outcome and changes nothing; the exact same
signed request twice is 401.

Nodes run with ``--heartbeat-s 0`` so their op counts change only through our requests.
About 15-25 s on two cores, most of it starting the nodes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from node.client.api import ApiError, GatewayClient
from node.client.signer import sign_request
from node.devnet import LocalFog
from node.identity.keystore import read_keystore
from tests.helpers import seeded_keys
from tests.real.fogs import running_fog

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
ISSUER = read_keystore(ROOT / "bootstrap/local/issuer-keystore.json", "local")
ALICE, BOB = seeded_keys(2, seed=101)
NODES: Final = 3
CONVERGE_S_MAX: Final = 30.0
GOSSIP_S_MAX: Final = 15.0


@pytest.fixture
def fog(tmp_path: Path) -> Iterator[LocalFog]:
    with running_fog(tmp_path, NODES, CONVERGE_S_MAX) as started:
        yield started


def _until(what: str, check: Callable[[], Any], timeout_s: float = GOSSIP_S_MAX) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s"
        time.sleep(0.05)


def test_credits_minted_on_one_node_are_spent_through_another_and_agree_everywhere(
    fog: LocalFog,
) -> None:
    with contextlib.ExitStack() as stack:
        _scenario(fog, stack)


def _scenario(fog: LocalFog, stack: contextlib.ExitStack) -> None:
    urls = []
    for i in range(NODES):
        status = fog.status(i)
        assert status is not None
        assert status["network"] == "local"
        urls.append(status["gateway"])
    public = [stack.enter_context(GatewayClient(url)) for url in urls]
    node_a, node_b, _node_c = (c.node_address() for c in public)

    def balances(who: str) -> list[dict[str, Any]]:
        return [c.credits_balance(who) for c in public]

    def everywhere(who: str, expect: dict[str, int]) -> bool:
        return all({k: b[k] for k in expect} == expect for b in balances(who))

    def op_counts() -> list[int]:
        return [c.node_info()["ops"] for c in public]

    # -- the local issuer mints 1000 to alice through node A
    with GatewayClient(urls[0], ISSUER) as issuer:
        minted = issuer.credits_mint(ALICE.address, 1000, "mint-alice-1")
        assert (minted["node"], minted["amount"], minted["replayed"]) == (node_a, 1000, False)
        # A stranger's mint is refused (403) and writes nothing.
        with GatewayClient(urls[0], BOB) as stranger, pytest.raises(ApiError) as refused:
            stranger.credits_mint(BOB.address, 10**6, "free-money")
        assert (refused.value.status, refused.value.code) == (403, "unauthorized")
    _until("alice's 1000 on every node", lambda: everywhere(ALICE.address, {"available": 1000}))

    # -- alice pays bob 600 through node B: B asks A for her rights, accepts, transfers
    with GatewayClient(urls[1], ALICE) as alice_b:
        paid = alice_b.credits_transfer(BOB.address, 600, "pay-bob-1")
        assert (paid["node"], paid["from"], paid["to"], paid["amount"]) == (
            node_b,
            ALICE.address,
            BOB.address,
            600,
        )
        assert paid["seq"] == 2  # B's chain: the accept of A's grant, then the transfer
    _until(
        "the transfer on every node",
        lambda: (
            everywhere(ALICE.address, {"available": 400, "spent": 600})
            and everywhere(BOB.address, {"available": 600, "earned": 600})
        ),
    )
    fog.wait(lambda: fog.converged(NODES), timeout_s=CONVERGE_S_MAX)
    settled_ops, settled = op_counts(), (balances(ALICE.address), balances(BOB.address))
    assert len(set(settled_ops)) == 1

    # -- an overdraw through node C is 402 with the numbers and changes nothing anywhere
    with GatewayClient(urls[2], ALICE) as alice_c:
        with pytest.raises(ApiError) as overdraw:
            alice_c.credits_transfer(BOB.address, 401, "too-much")
        assert overdraw.value.status == 402
        details = overdraw.value.details
        assert (details["error"], details["required"], details["available"]) == (
            "insufficient_credits",
            401,
            400,
        )
        # -- a re-signed retry of the paid transfer, through node C (naming C): the original
        with_key_again = alice_c.credits_transfer(BOB.address, 600, "pay-bob-1")
        assert with_key_again == {**paid, "replayed": True}
    with GatewayClient(urls[1], ALICE) as alice_b:
        assert alice_b.credits_transfer(BOB.address, 600, "pay-bob-1") == {
            **paid,
            "replayed": True,
        }

    fog.wait(lambda: fog.converged(NODES), timeout_s=CONVERGE_S_MAX)
    assert op_counts() == settled_ops  # the overdraw and the replays wrote nothing
    assert (balances(ALICE.address), balances(BOB.address)) == settled

    # -- the exact same signed request twice: 200 once, then 401 replayed, and nothing more
    body = (
        f'{{"to":"{BOB.address}","amount":1,"idempotency_key":"one-more","node":"{node_b}"}}'
    ).encode()
    path = "/v1/billing/credits/transfer"
    headers = sign_request(ALICE, "POST", path, body, int(time.time()), "billing-once-0001")
    headers["Content-Type"] = "application/json"
    with httpx.Client(timeout=10, trust_env=False) as http:
        first = http.post(urls[1] + path, content=body, headers=headers)
        assert first.status_code == 200, first.text
        second = http.post(urls[1] + path, content=body, headers=headers)
        assert (second.status_code, second.json()["error"]) == (401, "replayed")
        # The same bytes through node A: A has not seen this nonce, but the order names B.
        fog.wait(lambda: fog.converged(NODES), timeout_s=CONVERGE_S_MAX)
        elsewhere = http.post(urls[0] + path, content=body, headers=headers)
        assert elsewhere.status_code == 200, elsewhere.text
        assert elsewhere.json() == {**first.json(), "replayed": True}

    fog.wait(lambda: fog.converged(NODES), timeout_s=CONVERGE_S_MAX)
    # Only the one extra transfer changed anything: B held none of alice's rights any more,
    # so A granted 1 and B accepted it, then transferred (three ops).
    assert op_counts() == [settled_ops[0] + 3] * NODES
    assert balances(ALICE.address) == [{**b, "available": 399, "spent": 601} for b in settled[0]]
    assert balances(BOB.address) == [{**b, "available": 601, "earned": 601} for b in settled[1]]
