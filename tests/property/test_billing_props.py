"""Properties of the billing core: one state from any order, never below zero, mints and
idempotency keys that cannot be forged or replayed."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.identity.keys import NodeKey, keccak256
from node.ledger import billing
from node.ledger.op import Op, OpRejected
from node.ledger.state import State

NET = "local"
ISSUER = NodeKey(keccak256(b"formation local issuer: a well-known dev key, never for real credits"))
NODES = [NodeKey(random.Random(7000 + i).randbytes(32)) for i in range(3)]
ACCOUNTS = [NodeKey(random.Random(8000 + i).randbytes(32)) for i in range(3)]

_action = st.one_of(
    st.tuples(st.just("mint"), st.integers(0, 2), st.integers(0, 2), st.integers(1, 60)),
    st.tuples(
        st.just("transfer"),
        st.integers(0, 2),
        st.integers(0, 2),
        st.integers(1, 60),
        st.integers(0, 2),
        st.integers(0, 3),
    ),
    st.tuples(st.just("hold"), st.integers(0, 2), st.integers(0, 2), st.integers(1, 60)),
    st.tuples(st.just("draw"), st.integers(0, 2), st.integers(0, 5), st.integers(1, 40)),
    st.tuples(st.just("release"), st.integers(0, 2), st.integers(0, 5)),
    st.tuples(
        st.just("grant"),
        st.integers(0, 2),
        st.integers(0, 2),
        st.integers(1, 60),
        st.integers(1, 2),
    ),
    st.tuples(st.just("accept"), st.integers(0, 2), st.integers(0, 5)),
)


def _build(actions: list[tuple[Any, ...]]) -> list[Op]:
    """Sign the actions as the chains of NODES would hold them (amounts unchecked: overdraws,
    replays and dangling references included)."""
    seqs = [0, 0, 0]
    holds: list[tuple[int, str]] = []
    grants: list[tuple[int, int, int]] = []  # granter, seq, to_node
    ops: list[Op] = []
    for k, action in enumerate(actions):
        kind, n = action[0], action[1]
        if kind == "accept" and grants and action[2] % 2 == 0:
            # Mostly accept a real grant by the node it names (else a dangling or foreign one).
            n = grants[action[2] % len(grants)][2]
        node = NODES[n]
        seqs[n] += 1
        hlc = (1000 + k, 0)
        payload: dict[str, Any] = {"seq": seqs[n]}
        if kind == "mint":
            payload["order"] = billing.sign_order(
                ISSUER,
                NET,
                hlc,
                "billing.order.mint",
                to=ACCOUNTS[action[2]].address,
                amount=action[3],
                idempotency_key=f"m{k}",
                node=node.address,
            )
        elif kind == "transfer":
            frm, to = ACCOUNTS[action[2]], ACCOUNTS[(action[2] + 1 + action[4] % 2) % 3]
            payload["order"] = billing.sign_order(
                frm,
                NET,
                hlc,
                "billing.order.transfer",
                to=to.address,
                amount=action[3],
                idempotency_key=f"t{action[5]}",  # few keys: replays happen
                node=node.address,
            )
        elif kind == "hold":
            order = billing.sign_order(
                ACCOUNTS[action[2]],
                NET,
                hlc,
                "billing.order.hold",
                payee=ACCOUNTS[(action[2] + 1) % 3].address,
                amount=action[3],
                expires_ms=1000 + k + 8,
                idempotency_key=f"h{k}",
                node=node.address,
            )
            payload["order"] = order
            holds.append((n, order.id.hex()))
        elif kind in ("draw", "release"):
            hold = holds[action[2] % len(holds)][1] if holds else "0" * 64
            payload["hold"] = hold
            if kind == "draw":
                payload["amount"] = action[3]
        elif kind == "grant":
            to_node = (n + action[4]) % 3
            payload.update(
                account=ACCOUNTS[action[2]].address,
                amount=action[3],
                to_node=NODES[to_node].address,
            )
            grants.append((n, seqs[n], to_node))
        else:
            granter, from_seq = grants[action[2] % len(grants)][:2] if grants else ((n + 1) % 3, 1)
            source = ((n + 1) % 3, from_seq) if granter == n else (granter, from_seq)
            payload.update(from_node=NODES[source[0]].address, from_seq=source[1])
        ops.append(billing.sign_chain(node, NET, hlc, "billing." + kind, **payload))
    return ops


def _view(state: State) -> tuple[Any, ...]:
    balances = tuple(tuple(billing.balance(state, a.address).values()) for a in ACCOUNTS)
    outcomes = tuple(
        billing.entry_outcome(state, node.address, seq) for node in NODES for seq in range(1, 40)
    )
    return balances, outcomes, state.state_hash()


def _apply_checking(ops: list[Op]) -> State:
    state = State(NET)
    for op in ops:
        state.apply(op)
        totals = billing.totals(state)
        assert totals["rights_min"] >= 0
        assert totals["balance_min"] >= 0
        assert totals["minted"] == totals["available"] + totals["held"]
        for account in ACCOUNTS:
            b = billing.balance(state, account.address)
            assert b["available"] >= 0
            assert b["held"] >= 0
    return state


@settings(max_examples=150, deadline=None)
@given(st.lists(_action, min_size=1, max_size=24), st.randoms(use_true_random=False))
def test_any_order_and_duplication_gives_one_state_never_below_zero(
    actions: list[tuple[Any, ...]], rng: random.Random
) -> None:
    # Genesis rights on every (account, node) pair first, so grants and spends can be valid.
    genesis = [("mint", n, a, 30) for n in range(3) for a in range(3)]
    ops = _build(genesis + actions)
    in_order = _apply_checking(ops)
    shuffled = ops + [rng.choice(ops) for _ in range(len(ops) // 2)]
    rng.shuffle(shuffled)
    other = _apply_checking(shuffled)
    assert _view(other) == _view(in_order)
    # Once every op is there, a chain waits only behind an accept of a grant that was never
    # signed (rule 3: it might still come); everything before it is decided.
    table = in_order.tables["billing"]
    for node in NODES:
        top = billing.next_seq(in_order, node.address) - 1
        pending = [
            seq
            for seq in range(1, top + 1)
            if billing.entry_outcome(in_order, node.address, seq) is None
        ]
        if pending:
            entry = table[f"chain:{node.address}:{pending[0]}"].fields.get("e")
            assert entry["k"] == "accept"
            assert entry["from_seq"] >= billing.next_seq(in_order, entry["from_node"])
            assert pending == list(range(pending[0], top + 1))


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 2**40))
def test_a_mint_not_signed_by_a_genesis_issuer_is_refused(secret: bytes, amount: int) -> None:
    try:
        key = NodeKey(secret)
    except ValueError:
        return  # not a valid secp256k1 secret: no key to forge with
    if key.address in billing.issuers_of(NET):
        return
    order = billing.sign_order(
        key,
        NET,
        (1, 0),
        "billing.order.mint",
        to=ACCOUNTS[0].address,
        amount=amount,
        idempotency_key="forged",
        node=NODES[0].address,
    )
    op = billing.sign_chain(NODES[0], NET, (2, 0), "billing.mint", seq=1, order=order)
    state = State(NET)
    before = state.state_hash()
    with pytest.raises(OpRejected) as refused:
        state.ingest(op.body, op.sig)
    assert refused.value.code == "unauthorized"
    assert state.state_hash() == before
    assert billing.totals(state)["minted"] == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 100), st.integers(1, 100), st.integers(0, 2))
def test_a_replayed_idempotency_key_has_no_effect(first: int, second: int, to: int) -> None:
    state = State(NET)
    node = NODES[0]
    mint = billing.sign_order(
        ISSUER,
        NET,
        (1, 0),
        "billing.order.mint",
        to=ACCOUNTS[0].address,
        amount=500,
        idempotency_key="m",
        node=node.address,
    )
    ops = [billing.sign_chain(node, NET, (2, 0), "billing.mint", seq=1, order=mint)]
    payee = ACCOUNTS[1 + to % 2].address
    for seq, amount in ((2, first), (3, second)):
        order = billing.sign_order(
            ACCOUNTS[0],
            NET,
            (2 + seq, 0),
            "billing.order.transfer",
            to=payee,
            amount=amount,
            idempotency_key="once",
            node=node.address,
        )
        ops.append(
            billing.sign_chain(node, NET, (3 + seq, 0), "billing.transfer", seq=seq, order=order)
        )
    for op in ops[:2]:
        state.ingest(op.body, op.sig)
    after_first = billing.balance(state, ACCOUNTS[0].address)
    state.ingest(ops[2].body, ops[2].sig)
    state.ingest(ops[1].body, ops[1].sig)  # and the same op again
    assert billing.balance(state, ACCOUNTS[0].address) == after_first
    assert after_first["available"] == 500 - first
    assert billing.entry_outcome(state, node.address, 3) == "duplicate_idempotency_key"
