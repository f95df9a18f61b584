"""The billing routes over real HTTP, in front of two in-process nodes' credits services.

Node A serves the gateway; node B is a peer whose service A asks for rights directly (the
libp2p protocol in between is covered by tests/real/test_billing_fog.py), and "gossip" is a
copy of one replica's ops into the other (``sync``). Requests are signed with eth-account.
Every refusal is checked to have written nothing: not on A, not on B.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node.credits.service import CreditsService
from node.gateway.app import GatewayApp, serve_gateway
from node.gateway.routes import ENDPOINTS
from node.identity.keys import NodeKey
from node.identity.keystore import read_keystore
from node.ledger import billing
from node.ledger.op import Op, OpRejected, decode_op
from node.ledger.request_op import request_op_body
from node.ledger.state import State
from node.p2p.rights import Granted, RightsAsk, parse_answer
from node.replica import Replica, SubmitResult
from tests.gateway.test_app import sign
from tests.helpers import seeded_keys

NET = "local"
ROOT = Path(__file__).resolve().parents[2]
ISSUER = read_keystore(ROOT / "bootstrap/local/issuer-keystore.json", "local")
ALICE, BOB, NODE_A, NODE_B, STRANGER = seeded_keys(5, seed=71)


@dataclass
class _Host:
    """A node as the credits service sees it, with a direct line to its peers' services."""

    key: NodeKey
    replica: Replica
    peers: dict[str, CreditsService] = field(default_factory=dict)
    answering: bool = True  # False: asks go unanswered (the peer is gone)
    deliver: bool = True  # False: the peer grants, but its answer is lost
    store_fails: int = 0  # the next N commits fail (a full disk)

    @property
    def address(self) -> str:
        return self.key.address

    @property
    def network(self) -> str:
        return NET

    def read(self, fn: Any) -> Any:
        with self.replica.lock:
            return fn(self.replica.state)

    def sign(self, kind: str, payload: dict[str, Any]) -> Op:
        return self.replica.sign(self.key, kind, payload, int(time.time() * 1000))

    async def store(self, ops: list[Op]) -> None:
        if self.store_fails:
            self.store_fails -= 1
            raise OSError(28, "No space left on device")
        checked = [(op, State.check_op(op)) for op in ops]
        now_ms = int(time.time() * 1000)
        result = await trio.to_thread.run_sync(self.replica.submit_checked, checked, now_ms)
        assert len(result.accepted) == len(ops)

    async def ingest(self, ops: list[tuple[bytes, bytes]]) -> None:
        self.replica.submit(ops, int(time.time() * 1000))

    async def get_wire(self, op_ids: list[bytes]) -> list[tuple[bytes, bytes]]:
        return self.replica.get_wire(op_ids)

    async def ask(self, peer: str, account: str, amount: int, have: int) -> Granted | None:
        if not self.answering:
            await trio.sleep(math.inf)
        frame = await self.peers[peer].answer_ask(self.address, RightsAsk(account, amount, have))
        return parse_answer(frame) if self.deliver else None


class _GatewayNode:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def info(self) -> dict[str, Any]:
        return {"address": NODE_A.address, "network": NET}

    async def submit_checked(self, ops: list[tuple[Op, dict[str, Any]]]) -> SubmitResult:
        return self.replica.submit_checked(ops, int(time.time() * 1000))


@dataclass
class Fog:
    url: str
    http: httpx.AsyncClient
    a: CreditsService
    b: CreditsService
    ra: Replica
    rb: Replica

    @property
    def ops(self) -> tuple[int, int]:
        return self.ra.state.op_count, self.rb.state.op_count

    def sync(self) -> None:
        """Gossip: every op of each replica into the other."""
        for src, dst in ((self.ra, self.rb), (self.rb, self.ra)):
            wire = [(op.body, op.sig) for _, op in src.store.iter_ops()]
            dst.submit(wire, int(time.time() * 1000))

    def balance(self, replica: Replica, who: NodeKey) -> dict[str, int]:
        return billing.balance(replica.state, who.address)

    async def send(
        self,
        path: str,
        body: Any,
        key: NodeKey,
        headers: dict[str, str] | None = None,
        act_as: str | None = None,
    ) -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {**sign(key, "POST", path, data, act_as=act_as), **(headers or {})}
        return await self.http.post(self.url + path, content=data, headers=sent)

    async def mint(self, to: NodeKey, amount: int, key: str, node: str = "") -> httpx.Response:
        body = {"to": to.address, "amount": amount, "idempotency_key": key}
        body["node"] = node or NODE_A.address
        return await self.send("/v1/billing/credits/mint", body, ISSUER)

    async def transfer(
        self, payer: NodeKey, to: NodeKey, amount: int, key: str, node: str = ""
    ) -> httpx.Response:
        body = {"to": to.address, "amount": amount, "idempotency_key": key}
        body["node"] = node or NODE_A.address
        return await self.send("/v1/billing/credits/transfer", body, payer)


@pytest.fixture
async def fog(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Fog]:
    ra, rb = Replica.open(tmp_path / "a", NET), Replica.open(tmp_path / "b", NET)
    host_a, host_b = _Host(NODE_A, ra), _Host(NODE_B, rb)
    a = CreditsService(host_a, ask_wait_s=0.5)
    b = CreditsService(host_b, ask_wait_s=0.5)
    host_a.peers[NODE_B.address] = b
    host_b.peers[NODE_A.address] = a
    app = GatewayApp(_GatewayNode(ra), billing=a)
    url = await nursery.start(serve_gateway, app, "127.0.0.1", 0)
    async with httpx.AsyncClient(timeout=10) as http:
        yield Fog(url, http, a, b, ra, rb)
    ra.close()
    rb.close()


def _host(service: CreditsService) -> _Host:
    host = service.host
    assert isinstance(host, _Host)
    return host


async def test_the_issuer_mints_and_a_replay_answers_the_original(fog: Fog) -> None:
    minted = await fog.mint(ALICE, 100, "mint-1")
    assert minted.status_code == 200, minted.text
    got = minted.json()
    assert (got["kind"], got["to"], got["amount"], got["node"], got["seq"]) == (
        "billing.mint",
        ALICE.address,
        100,
        NODE_A.address,
        1,
    )
    assert got["replayed"] is False
    balance = await fog.http.get(f"{fog.url}/v1/billing/balance/{ALICE.address}")
    assert balance.json() == {
        "address": ALICE.address,
        "available": 100,
        "held": 0,
        "spent": 0,
        "earned": 0,
    }
    before = fog.ops
    again = await fog.mint(ALICE, 100, "mint-1")  # signed anew: a client's retry
    assert again.status_code == 200, again.text
    assert again.json() == {**got, "replayed": True}
    assert fog.ops == before
    assert fog.balance(fog.ra, ALICE)["available"] == 100


async def test_the_same_signed_request_twice_is_401_and_changes_nothing(fog: Fog) -> None:
    body = json.dumps(
        {"to": ALICE.address, "amount": 5, "idempotency_key": "k", "node": NODE_A.address}
    ).encode()
    headers = sign(ISSUER, "POST", "/v1/billing/credits/mint", body)
    first = await fog.http.post(fog.url + "/v1/billing/credits/mint", content=body, headers=headers)
    assert first.status_code == 200, first.text
    before = fog.ops
    second = await fog.http.post(
        fog.url + "/v1/billing/credits/mint", content=body, headers=headers
    )
    assert (second.status_code, second.json()["error"]) == (401, "replayed")
    assert fog.ops == before


async def test_a_mint_by_anyone_but_an_issuer_is_403_and_changes_nothing(fog: Fog) -> None:
    body = {
        "to": STRANGER.address,
        "amount": 10**6,
        "idempotency_key": "free-money",
        "node": NODE_A.address,
    }
    refused = await fog.send("/v1/billing/credits/mint", body, STRANGER)
    assert (refused.status_code, refused.json()["error"]) == (403, "unauthorized")
    assert "genesis issuer" in refused.json()["message"]
    assert fog.ops == (0, 0)
    assert fog.balance(fog.ra, STRANGER)["available"] == 0


_GOOD = {"to": BOB.address, "amount": 5, "idempotency_key": "t-1", "node": NODE_A.address}


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (b"{not json", 400, "invalid_json", "not JSON"),
        ([1, 2], 400, "invalid_json", "JSON object"),
        ({k: v for k, v in _GOOD.items() if k != "node"}, 400, "invalid_payload", NODE_A.address),
        ({**_GOOD, "amount": 0}, 400, "invalid_payload", "amount"),
        ({**_GOOD, "amount": -3}, 400, "invalid_payload", "amount"),
        ({**_GOOD, "amount": "5"}, 400, "invalid_payload", "integer"),
        ({**_GOOD, "amount": 2**62 + 1}, 400, "invalid_payload", "amount"),
        ({**_GOOD, "to": "bob"}, 400, "invalid_payload", "to"),
        ({**_GOOD, "to": ALICE.address}, 400, "invalid_payload", "paying account itself"),
        ({**_GOOD, "idempotency_key": "has space"}, 400, "invalid_payload", "idempotency_key"),
        ({**_GOOD, "idempotency_key": "k" * 129}, 400, "invalid_payload", "idempotency_key"),
        ({**_GOOD, "idempotency_key": ""}, 400, "invalid_payload", "idempotency_key"),
        ({**_GOOD, "credits": 9}, 400, "invalid_payload", "credits"),
        ({**_GOOD, "node": NODE_B.address}, 400, "wrong_node", NODE_A.address),
    ],
)
async def test_bad_transfers_are_400_with_what_to_fix_and_change_nothing(
    fog: Fog, body: Any, status: int, code: str, says: str
) -> None:
    assert (await fog.mint(ALICE, 50, "m")).status_code == 200
    before = fog.ops
    refused = await fog.send("/v1/billing/credits/transfer", body, ALICE)
    assert (refused.status_code, refused.json()["error"]) == (status, code), refused.text
    assert says in refused.json()["message"]
    assert fog.ops == before
    assert fog.balance(fog.ra, ALICE)["available"] == 50


async def test_a_float_amount_is_refused(fog: Fog) -> None:
    raw = json.dumps({**_GOOD, "amount": 1.5}).encode()
    refused = await fog.send("/v1/billing/credits/transfer", raw, ALICE)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_json")
    assert fog.ops == (0, 0)


async def test_a_delegated_key_cannot_move_credits(fog: Fog) -> None:
    assert (await fog.mint(ALICE, 50, "m")).status_code == 200
    before = fog.ops
    refused = await fog.send("/v1/billing/credits/transfer", _GOOD, STRANGER, act_as=ALICE.address)
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    # An X-Act-As header the signature does not cover is refused before anything else.
    unsigned = await fog.send(
        "/v1/billing/credits/transfer", _GOOD, STRANGER, headers={"X-Act-As": ALICE.address}
    )
    assert (unsigned.status_code, unsigned.json()["error"]) == (401, "act_as_unsigned")
    assert fog.ops == before


async def test_a_transfer_moves_credits_and_a_replay_changes_nothing(fog: Fog) -> None:
    assert (await fog.mint(ALICE, 100, "m")).status_code == 200
    moved = await fog.transfer(ALICE, BOB, 30, "pay-bob-1")
    assert moved.status_code == 200, moved.text
    assert (moved.json()["from"], moved.json()["to"], moved.json()["amount"]) == (
        ALICE.address,
        BOB.address,
        30,
    )
    assert fog.balance(fog.ra, ALICE) == {"available": 70, "held": 0, "spent": 30, "earned": 0}
    assert fog.balance(fog.ra, BOB) == {"available": 30, "held": 0, "spent": 0, "earned": 30}
    before = fog.ops
    replay = await fog.transfer(ALICE, BOB, 30, "pay-bob-1")
    assert replay.json() == {**moved.json(), "replayed": True}
    other = await fog.transfer(ALICE, BOB, 31, "pay-bob-1")
    assert (other.status_code, other.json()["error"]) == (409, "idempotency_key_reused")
    assert moved.json()["op_id"] in other.json()["message"]
    assert fog.ops == before
    assert fog.balance(fog.ra, ALICE)["available"] == 70


async def test_an_overdraw_is_402_with_the_numbers_and_changes_nothing(fog: Fog) -> None:
    assert (await fog.mint(ALICE, 70, "m")).status_code == 200
    fog.sync()
    before, balances = fog.ops, (fog.balance(fog.ra, ALICE), fog.balance(fog.rb, ALICE))
    refused = await fog.transfer(ALICE, BOB, 71, "too-much")
    assert refused.status_code == 402, refused.text
    got = refused.json()
    assert (got["error"], got["required"], got["available"], got["available_here"]) == (
        "insufficient_credits",
        71,
        70,
        70,
    )
    assert "71" in got["message"]
    assert fog.ops == before
    assert (fog.balance(fog.ra, ALICE), fog.balance(fog.rb, ALICE)) == balances
    assert fog.balance(fog.ra, BOB)["available"] == 0


async def test_a_spend_beyond_the_local_rights_asks_the_peer_that_holds_them(fog: Fog) -> None:
    # Alice's credits are minted at B: A holds none of her rights.
    minted = await fog.b.carry_out(_order_at_b(ALICE, 80))
    assert minted.amount == 80
    fog.sync()
    moved = await fog.transfer(ALICE, BOB, 50, "via-b")
    assert moved.status_code == 200, moved.text
    # B granted 50 (its chain: mint, grant); A accepted it and then carried the transfer out.
    assert fog.b.stats.grants_given == 1
    assert (fog.a.stats.accepts, moved.json()["seq"]) == (1, 2)
    fog.sync()
    for replica in (fog.ra, fog.rb):
        assert fog.balance(replica, ALICE) == {"available": 30, "held": 0, "spent": 50, "earned": 0}
        assert billing.rights_of(replica.state, NODE_A.address, BOB.address) == 50
        assert billing.rights_of(replica.state, NODE_B.address, ALICE.address) == 30
        assert billing.totals(replica.state)["minted"] == 80


async def test_peers_that_do_not_answer_in_time_make_a_402_that_changes_nothing(
    fog: Fog,
) -> None:
    await fog.b.carry_out(_order_at_b(ALICE, 80))
    fog.sync()
    _host(fog.a).answering = False
    before = fog.ops
    started = trio.current_time()
    refused = await fog.transfer(ALICE, BOB, 50, "b-is-gone")
    waited_s = trio.current_time() - started
    assert refused.status_code == 402, refused.text
    got = refused.json()
    assert (got["required"], got["available"], got["available_here"]) == (50, 80, 0)
    assert 0.5 <= waited_s < 3.0  # the service's ask_wait_s, then the answer
    assert fog.ops == before
    assert fog.balance(fog.ra, ALICE)["available"] == 80


async def test_a_grant_whose_answer_was_lost_is_accepted_later(fog: Fog) -> None:
    await fog.b.carry_out(_order_at_b(ALICE, 80))
    fog.sync()
    _host(fog.a).deliver = False
    refused = await fog.transfer(ALICE, BOB, 50, "lost-answer")
    assert refused.status_code == 402
    assert fog.b.stats.grants_given == 1  # B did grant: the rights are in flight
    fog.sync()
    assert fog.balance(fog.ra, ALICE)["available"] == 80  # in flight still counts
    assert await fog.a.accept_awaiting() == 1
    assert await fog.a.accept_awaiting() == 0  # exactly once
    assert billing.rights_of(fog.ra.state, NODE_A.address, ALICE.address) == 50
    # The client's retry of the same order now runs at once.
    retried = await fog.transfer(ALICE, BOB, 50, "lost-answer")
    assert (retried.status_code, retried.json()["replayed"]) == (200, False)


async def test_an_order_gossiped_on_its_own_is_no_op(fog: Fog) -> None:
    body = json.dumps(_GOOD).encode()
    headers = sign(ALICE, "POST", "/v1/billing/credits/transfer", body)
    op_body = request_op_body(
        net=NET,
        author=ALICE.address,
        method="POST",
        path="/v1/billing/credits/transfer",
        body_text=body.decode(),
        timestamp_s=int(headers["X-Message"].split(":")[-2]),
        nonce=headers["X-Message"].split(":")[-1],
    )
    order = decode_op(op_body, bytes.fromhex(headers["X-Signature"][2:]), NET)
    assert order.kind == "billing.order.transfer"
    with pytest.raises(OpRejected):
        State.check_op(order)  # only a node's chain op carries an order


async def test_the_openapi_document_lists_the_billing_routes_and_402() -> None:
    from node.gateway.openapi import openapi

    doc = openapi(ENDPOINTS)
    transfer = doc["paths"]["/v1/billing/credits/transfer"]["post"]
    assert "402" in transfer["responses"]
    assert set(transfer["requestBody"]["content"]["application/json"]["schema"]["required"]) == {
        "to",
        "amount",
        "idempotency_key",
        "node",
    }
    assert "get" in doc["paths"]["/v1/billing/balance/{address}"]
    assert "required" in doc["components"]["schemas"]["InsufficientCredits"]["required"]


_clock = iter(range(1, 10**9))


def _order_at_b(to: NodeKey, amount: int) -> Op:
    return billing.sign_order(
        ISSUER,
        NET,
        (int(time.time() * 1000), next(_clock)),
        "billing.order.mint",
        to=to.address,
        amount=amount,
        idempotency_key=f"b-mint-{next(_clock)}",
        node=NODE_B.address,
    )


async def test_concurrent_spends_share_commits_and_never_overdraw(
    fog: Fog, nursery: trio.Nursery
) -> None:
    await nursery.start(fog.a.run)  # the committer: queued chain ops stored in batches
    assert (await fog.mint(ALICE, 30, "m")).status_code == 200
    answers: list[httpx.Response] = []

    async def spend(i: int) -> None:
        answers.append(await fog.transfer(ALICE, BOB, 1, f"c-{i}"))

    async with trio.open_nursery() as spenders:
        for i in range(40):
            spenders.start_soon(spend, i)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 30 + [402] * 10, [a.text for a in answers if a.status_code >= 403]
    seqs = sorted(a.json()["seq"] for a in answers if a.status_code == 200)
    assert seqs == list(range(2, 32))  # one chain, no seq twice, no gap
    assert fog.balance(fog.ra, ALICE) == {"available": 0, "held": 0, "spent": 30, "earned": 0}
    assert fog.balance(fog.ra, BOB)["available"] == 30
    stored = {op.id.hex() for _, op in fog.ra.store.iter_ops()}
    assert {a.json()["op_id"][2:] for a in answers if a.status_code == 200} <= stored
    # Fewer commits than chain ops: concurrent spends shared an fsync.
    assert fog.a.stats.commits < fog.a.stats.executed == 31


async def test_a_retry_through_another_node_answers_the_original(fog: Fog) -> None:
    # Alice's payment carried out by B; her client retries through A, naming A.
    await fog.b.carry_out(_order_at_b(ALICE, 80))
    fog.sync()
    order = billing.sign_order(
        ALICE,
        NET,
        (int(time.time() * 1000), next(_clock)),
        "billing.order.transfer",
        to=BOB.address,
        amount=20,
        idempotency_key="pay-once",
        node=NODE_B.address,
    )
    original = await fog.b.carry_out(order)
    fog.sync()
    before = fog.ops
    retried = await fog.transfer(ALICE, BOB, 20, "pay-once")  # names A
    assert retried.status_code == 200, retried.text
    assert retried.json() == {**original.to_json(), "replayed": True}
    assert retried.json()["node"] == NODE_B.address
    assert fog.ops == before


async def test_a_failed_commit_answers_503_writes_nothing_and_frees_the_seq(fog: Fog) -> None:
    assert (await fog.mint(ALICE, 50, "m")).status_code == 200
    _host(fog.a).store_fails = 1
    before = fog.ops
    failed = await fog.transfer(ALICE, BOB, 10, "disk-full")
    assert (failed.status_code, failed.json()["error"]) == (503, "busy")
    assert "could not store" in failed.json()["message"]
    assert fog.ops == before
    retried = await fog.transfer(ALICE, BOB, 10, "disk-full")  # the client's retry
    assert (retried.status_code, retried.json()["seq"]) == (200, 2)
    assert fog.balance(fog.ra, BOB)["available"] == 10


async def test_the_same_key_twice_at_once_moves_credits_once(
    fog: Fog, nursery: trio.Nursery
) -> None:
    await nursery.start(fog.a.run)
    assert (await fog.mint(ALICE, 50, "m")).status_code == 200
    answers: list[httpx.Response] = []

    async def pay() -> None:
        answers.append(await fog.transfer(ALICE, BOB, 10, "double-click"))

    async with trio.open_nursery() as clicks:
        for _ in range(4):
            clicks.start_soon(pay)
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.json()["op_id"] for a in answers}) == 1
    assert sorted(a.json()["replayed"] for a in answers) == [False, True, True, True]
    assert fog.balance(fog.ra, BOB)["available"] == 10
