"""The billing core (node/ledger/billing.py) through State: mint, transfer, holds, rights."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bootstrap.profiles import LOCAL_ISSUER_ADDRESS, PROFILES
from node.identity.keys import NodeKey
from node.identity.keystore import read_keystore
from node.ledger import billing
from node.ledger.op import Op, OpRejected
from node.ledger.state import State

NET = "local"
ROOT = Path(__file__).resolve().parents[2]
ISSUER = read_keystore(ROOT / "bootstrap/local/issuer-keystore.json", "local")


def _key(i: int) -> NodeKey:
    return NodeKey(random.Random(1000 + i).randbytes(32))


ALICE, BOB, CAROL = _key(1), _key(2), _key(3)
N1, N2 = _key(11), _key(12)


class Chain:
    """One node's chain: numbers its ops, signs them, applies them to a state."""

    def __init__(self, key: NodeKey, state: State) -> None:
        self.key = key
        self.state = state
        self.seq = 0
        self.clock = 0
        self.made: list[Op] = []

    def op(self, kind: str, **payload: object) -> Op:
        self.seq += 1
        self.clock += 1
        return billing.sign_chain(
            self.key, NET, (1000 + self.clock, 0), kind, seq=self.seq, **payload
        )

    def do(self, kind: str, **payload: object) -> str | None:
        made = self.op(kind, **payload)
        self.made.append(made)
        self.state.ingest(made.body, made.sig)
        return billing.entry_outcome(self.state, self.key.address, self.seq)


_clock = iter(range(1, 10**9))


def order(key: NodeKey, kind: str, **fields: object) -> Op:
    return billing.sign_order(key, NET, (500, next(_clock)), kind, **fields)


def mint(chain: Chain, to: NodeKey, amount: int, key: str) -> str | None:
    o = order(
        ISSUER,
        "billing.order.mint",
        to=to.address,
        amount=amount,
        idempotency_key=key,
        node=chain.key.address,
    )
    return chain.do("billing.mint", order=o)


def transfer(chain: Chain, frm: NodeKey, to: NodeKey, amount: int, key: str) -> str | None:
    o = order(
        frm,
        "billing.order.transfer",
        to=to.address,
        amount=amount,
        idempotency_key=key,
        node=chain.key.address,
    )
    return chain.do("billing.transfer", order=o)


def conserved(state: State) -> bool:
    t = billing.totals(state)
    return t["minted"] == t["available"] + t["held"] and min(t["rights_min"], t["balance_min"]) >= 0


def test_local_issuer_keystore_is_the_local_profiles_issuer() -> None:
    assert ISSUER.address == LOCAL_ISSUER_ADDRESS
    assert billing.issuers_of("local") == (LOCAL_ISSUER_ADDRESS,)


def test_no_other_network_trusts_the_well_known_local_issuer() -> None:
    others = [p for p in PROFILES.values() if p.network != "local"]
    assert any(p.network == "devnet" for p in others)
    for profile in others:
        assert LOCAL_ISSUER_ADDRESS not in profile.issuers
        assert LOCAL_ISSUER_ADDRESS not in billing.issuers_of(profile.network)
    # A devnet mint signed by the local key is refused by every devnet replica.
    state = State("devnet")
    o = billing.sign_order(
        ISSUER,
        "devnet",
        (1, 0),
        "billing.order.mint",
        to=ALICE.address,
        amount=5,
        idempotency_key="k",
        node=N1.address,
    )
    op = billing.sign_chain(N1, "devnet", (2, 0), "billing.mint", seq=1, order=o)
    with pytest.raises(OpRejected) as err:
        state.ingest(op.body, op.sig)
    assert err.value.code == "unauthorized"
    assert billing.balance(state, ALICE.address)["available"] == 0


def test_mint_and_balance() -> None:
    state = State(NET)
    c = Chain(N1, state)
    assert mint(c, ALICE, 100, "m1") == "ok"
    assert billing.balance(state, ALICE.address) == {
        "available": 100,
        "held": 0,
        "spent": 0,
        "earned": 0,
    }
    assert billing.rights_of(state, N1.address, ALICE.address) == 100
    assert conserved(state)


def test_forged_mint_is_refused_and_changes_nothing() -> None:
    state = State(NET)
    forged = order(
        ALICE,
        "billing.order.mint",
        to=ALICE.address,
        amount=10**6,
        idempotency_key="x",
        node=N1.address,
    )
    op = billing.sign_chain(N1, NET, (9, 0), "billing.mint", seq=1, order=forged)
    before = state.state_hash()
    with pytest.raises(OpRejected) as err:
        state.ingest(op.body, op.sig)
    assert err.value.code == "unauthorized"
    assert "genesis issuer" in str(err.value)
    assert state.state_hash() == before


def test_an_order_is_carried_out_only_by_the_node_it_names() -> None:
    state = State(NET)
    mint(Chain(N1, state), ALICE, 50, "m")
    o = order(
        ALICE,
        "billing.order.transfer",
        to=BOB.address,
        amount=5,
        idempotency_key="t",
        node=N1.address,
    )
    op = billing.sign_chain(N2, NET, (9, 0), "billing.transfer", seq=1, order=o)
    with pytest.raises(OpRejected) as err:
        state.ingest(op.body, op.sig)
    assert err.value.code == "unauthorized"
    with pytest.raises(OpRejected) as wrong:
        billing.decide(state, N2.address, o)
    assert wrong.value.code == "wrong_node"


def test_transfer_moves_credits_and_an_overdraw_is_invalid_everywhere() -> None:
    state = State(NET)
    c = Chain(N1, state)
    mint(c, ALICE, 100, "m1")
    assert transfer(c, ALICE, BOB, 30, "t1") == "ok"
    assert transfer(c, ALICE, BOB, 71, "t2") == "insufficient_rights"
    a, b = billing.balance(state, ALICE.address), billing.balance(state, BOB.address)
    assert (a["available"], a["spent"]) == (70, 30)
    assert (b["available"], b["earned"]) == (30, 30)
    assert conserved(state)
    # The chain goes on after an invalid entry.
    assert transfer(c, ALICE, BOB, 70, "t3") == "ok"
    assert billing.balance(state, ALICE.address)["available"] == 0


def test_decide_refuses_with_insufficient_credits_required_and_available() -> None:
    state = State(NET)
    mint(Chain(N1, state), ALICE, 40, "m1")
    o = order(
        ALICE,
        "billing.order.transfer",
        to=BOB.address,
        amount=41,
        idempotency_key="t",
        node=N1.address,
    )
    before = state.state_hash()
    with pytest.raises(billing.InsufficientCredits) as err:
        billing.decide(state, N1.address, o)
    assert err.value.code == "insufficient_credits"
    assert (err.value.required, err.value.available) == (41, 40)
    assert state.state_hash() == before


def test_decide_locally_or_ask_the_peers_holding_rights() -> None:
    state = State(NET)
    c1, c2 = Chain(N1, state), Chain(N2, state)
    mint(c1, ALICE, 10, "m1")
    mint(c2, ALICE, 50, "m2")
    small = order(
        ALICE,
        "billing.order.transfer",
        to=BOB.address,
        amount=10,
        idempotency_key="a",
        node=N1.address,
    )
    decision = billing.decide(state, N1.address, small)
    assert decision.action == "execute"
    assert decision.kind == "billing.transfer"
    assert decision.payload is not None
    assert decision.payload["seq"] == c1.seq + 1
    big = order(
        ALICE,
        "billing.order.transfer",
        to=BOB.address,
        amount=30,
        idempotency_key="b",
        node=N1.address,
    )
    ask = billing.decide(state, N1.address, big)
    assert ask.action == "ask"
    assert ask.plan is not None
    assert ask.plan.asks == (billing.Ask(N2.address, ALICE.address, 20),)
    # N2 answers with a grant; N1 accepts it, then the spend is local.
    granted = billing.grant_answer(state, N2.address, ask.plan.asks[0])
    assert granted == 20
    assert c2.do("billing.grant", account=ALICE.address, amount=granted, to_node=N1.address) == "ok"
    assert billing.balance(state, ALICE.address)["available"] == 60  # in flight still counts
    assert c1.do("billing.accept", from_node=N2.address, from_seq=c2.seq) == "ok"
    assert billing.rights_of(state, N1.address, ALICE.address) == 30
    assert billing.decide(state, N1.address, big).action == "execute"
    assert conserved(state)


def test_accept_waits_for_its_grant_and_takes_effect_once() -> None:
    early, late = State(NET), State(NET)
    c2 = Chain(N2, State(NET))
    m = order(
        ISSUER,
        "billing.order.mint",
        to=ALICE.address,
        amount=9,
        idempotency_key="m",
        node=N2.address,
    )
    ops = [c2.op("billing.mint", order=m)]
    ops.append(c2.op("billing.grant", account=ALICE.address, amount=4, to_node=N1.address))
    c1 = Chain(N1, State(NET))
    accept = c1.op("billing.accept", from_node=N2.address, from_seq=2)
    again = c1.op("billing.accept", from_node=N2.address, from_seq=2)
    early.ingest(accept.body, accept.sig)
    early.ingest(again.body, again.sig)
    assert billing.entry_outcome(early, N1.address, 1) is None  # pending: the grant is not here
    assert billing.rights_of(early, N1.address, ALICE.address) == 0
    for op in ops:
        early.ingest(op.body, op.sig)
    for op in [again, *reversed(ops), accept]:
        late.ingest(op.body, op.sig)
    for state in (early, late):
        assert billing.entry_outcome(state, N1.address, 1) == "ok"
        assert billing.entry_outcome(state, N1.address, 2) == "grant_already_accepted"
        assert billing.rights_of(state, N1.address, ALICE.address) == 4
        assert billing.rights_of(state, N2.address, ALICE.address) == 5
        assert conserved(state)


def test_replayed_order_and_reused_key_take_no_effect() -> None:
    state = State(NET)
    c = Chain(N1, state)
    mint(c, ALICE, 100, "m1")
    o = order(
        ALICE,
        "billing.order.transfer",
        to=BOB.address,
        amount=10,
        idempotency_key="once",
        node=N1.address,
    )
    assert c.do("billing.transfer", order=o) == "ok"
    assert billing.decide(state, N1.address, o).action == "duplicate"
    assert c.do("billing.transfer", order=o) == "duplicate_idempotency_key"
    assert transfer(c, ALICE, CAROL, 10, "once") == "duplicate_idempotency_key"
    assert billing.balance(state, ALICE.address)["available"] == 90
    assert billing.balance(state, CAROL.address)["available"] == 0
    assert mint(c, ALICE, 100, "m1") == "duplicate_idempotency_key"
    assert billing.totals(state)["minted"] == 100


def _hold(c: Chain, amount: int, expires_ms: int, key: str) -> str:
    o = order(
        ALICE,
        "billing.order.hold",
        payee=BOB.address,
        amount=amount,
        expires_ms=expires_ms,
        idempotency_key=key,
        node=c.key.address,
    )
    assert c.do("billing.hold", order=o) == "ok"
    return o.id.hex()


def test_hold_draw_release_with_the_network_fee() -> None:
    state = State(NET)
    c = Chain(N1, state)
    mint(c, ALICE, 1000, "m")
    hold = _hold(c, 400, expires_ms=10**9, key="h")
    assert billing.balance(state, ALICE.address) == {
        "available": 600,
        "held": 400,
        "spent": 0,
        "earned": 0,
    }
    assert c.do("billing.draw", hold=hold, amount=100) == "ok"
    assert c.do("billing.draw", hold=hold, amount=301) == "exceeds_hold"
    fee = 100 * billing.FEE_BPS // 10_000
    assert billing.balance(state, BOB.address)["earned"] == 100 - fee
    fee_account = billing.fee_account_of(NET)
    assert fee_account is not None
    assert billing.balance(state, fee_account)["available"] == fee
    assert c.do("billing.release", hold=hold) == "ok"
    assert c.do("billing.release", hold=hold) == "hold_resolved"
    assert c.do("billing.draw", hold=hold, amount=1) == "hold_resolved"
    a = billing.balance(state, ALICE.address)
    assert (a["available"], a["held"], a["spent"]) == (900, 0, 100)
    view = billing.hold_view(state, hold)
    assert view is not None
    assert view["resolved"] == "released"
    assert conserved(state)


def test_hold_expires_deterministically() -> None:
    state = State(NET)
    c = Chain(N1, state)
    mint(c, ALICE, 50, "m")
    expires_ms = 1000 + c.clock + 3  # the chain's clock reaches it two ops later
    hold = _hold(c, 50, expires_ms=expires_ms, key="h")
    assert billing.due_releases(state, N1.address, expires_ms - 1) == []
    assert c.do("billing.draw", hold=hold, amount=5) == "ok"
    assert billing.due_releases(state, N1.address, expires_ms) == [hold]
    assert c.do("billing.draw", hold=hold, amount=5) == "hold_expired"
    assert c.do("billing.release", hold=hold) == "ok"
    view = billing.hold_view(state, hold)
    assert view is not None
    assert view["resolved"] == "expired"
    assert billing.due_releases(state, N1.address, expires_ms) == []
    assert billing.balance(state, ALICE.address)["available"] == 45


def test_grant_beyond_rights_and_foreign_hold_are_invalid() -> None:
    state = State(NET)
    c1, c2 = Chain(N1, state), Chain(N2, state)
    mint(c1, ALICE, 10, "m")
    hold = _hold(c1, 5, expires_ms=10**9, key="h")
    assert c2.do("billing.grant", account=ALICE.address, amount=1, to_node=N1.address) == (
        "insufficient_rights"
    )
    assert c2.do("billing.draw", hold=hold, amount=1) == "no_such_hold_here"
    assert c1.do("billing.accept", from_node=N2.address, from_seq=1) == "no_such_grant"
    assert conserved(state)


def test_bad_payloads_name_the_field() -> None:
    state = State(NET)
    bad = billing.sign_chain(
        N1, NET, (1, 0), "billing.grant", seq=1, account=ALICE.address, amount=0, to_node=N2.address
    )
    with pytest.raises(OpRejected) as err:
        state.ingest(bad.body, bad.sig)
    assert err.value.field == "amount"
    own = billing.sign_chain(
        N1, NET, (1, 0), "billing.grant", seq=1, account=ALICE.address, amount=1, to_node=N1.address
    )
    with pytest.raises(OpRejected) as err2:
        state.ingest(own.body, own.sig)
    assert err2.value.field == "to_node"
    selfpay = order(
        ALICE,
        "billing.order.transfer",
        to=ALICE.address,
        amount=1,
        idempotency_key="s",
        node=N1.address,
    )
    with pytest.raises(OpRejected) as err3:
        billing.check_order(selfpay, NET)
    assert err3.value.field == "to"


def test_a_forked_seq_counts_the_greater_stamp_on_every_replica() -> None:
    a, b = State(NET), State(NET)
    m = order(
        ISSUER,
        "billing.order.mint",
        to=ALICE.address,
        amount=10,
        idempotency_key="m",
        node=N1.address,
    )
    first = billing.sign_chain(N1, NET, (5, 0), "billing.mint", seq=1, order=m)
    m2 = order(
        ISSUER, "billing.order.mint", to=BOB.address, amount=7, idempotency_key="n", node=N1.address
    )
    second = billing.sign_chain(N1, NET, (6, 0), "billing.mint", seq=1, order=m2)
    a.ingest(first.body, first.sig)
    assert billing.balance(a, ALICE.address)["available"] == 10
    a.ingest(second.body, second.sig)
    b.ingest(second.body, second.sig)
    b.ingest(first.body, first.sig)
    for state in (a, b):
        assert billing.balance(state, ALICE.address)["available"] == 0
        assert billing.balance(state, BOB.address)["available"] == 7
    assert a.state_hash() == b.state_hash()


def test_a_state_merge_is_evaluated_like_the_ops_themselves() -> None:
    left, right, both = State(NET), State(NET), State(NET)
    c1, c2 = Chain(N1, left), Chain(N2, right)
    mint(c1, ALICE, 30, "a")
    mint(c2, ALICE, 20, "b")
    assert billing.balance(left, ALICE.address)["available"] == 30  # memo built before merge
    grant = c2.op("billing.grant", account=ALICE.address, amount=5, to_node=N1.address)
    right.ingest(grant.body, grant.sig)
    left.merge(right)
    assert billing.balance(left, ALICE.address)["available"] == 50
    assert billing.rights_of(left, N2.address, ALICE.address) == 15
    assert conserved(left)
    # The same as applying every op to one replica.
    for op in [*c1.made, *c2.made, grant]:
        both.ingest(op.body, op.sig)
    assert billing.balance(both, ALICE.address) == billing.balance(left, ALICE.address)
    assert billing.totals(both) == billing.totals(left)
