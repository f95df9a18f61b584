"""A billing run: a fog of nodes spends credits with no coordinator, under faults and attack.

Long on purpose: one event loop whose handlers are the nodes' drivers and whose checks read
what the handlers recorded; split, each half would reach into the other's state.

Theory of operation
-------------------
Every node holds a full replica (``node.ledger.state.State``) and runs the real billing core
(``node.ledger.billing``) as a node would: an order sent to it goes through ``billing.decide``;
a spend its own rights cover is signed into its chain at once (a *local* decision), one they do
not cover sends the asks of ``plan_spend`` to peers, which answer with ``billing.grant`` ops
(``grant_answer``); the node accepts each grant it sees and retries, and refuses with
``insufficient_credits`` once ``ask_timeout_ms`` passes. Every op is signed, checked once
(``State.check_op``, as gossip ingress does) and applied on every replica through
``State.apply``: the simulation keeps no ledger of its own.

The workload is drawn from the seed: the issuer (the well-known local key) mints rights for
each (account, node) pair at ``provision_factor`` times that pair's planned demand; then
orders (transfers and holds, ``hot_fraction`` of them on one account that every node spends
at once) arrive over ``spend_spread_ms``, some for more than the node holds
(``overdraw_fraction``). Holds are drawn 1-3 times, then released or left to expire (the node
releases ``due_releases``). Faults: every message is delayed anew (reordered), some delivered
twice; orders are double-submitted (again to their node, and to a node they do not name) and
keys reused by a second order; the fog splits in two for ``partition_ms`` (ops across wait for
the heal, asks across are lost); ``crashes`` nodes stop for ``crash_ms`` (their state survives,
their waiting spends are lost and the client resends them); a byzantine node 0 executes orders
it cannot cover, forges mints and executes orders that name other nodes.

Checked at every step, on every replica that applied an op: no (account, node) rights below
zero (the core asserts it; an ``AssertionError`` is a violation) and conservation (minted =
available + held over all accounts). After the run drains: no entry pending, identical
balances and entry outcomes on all replicas, conservation, every entry a node signed on a
local decision is valid everywhere (nothing accepted then undone), every byzantine overdraw
invalid everywhere, every forged op refused, each idempotency key and hold took effect at most
once, every expired hold resolved. ``invariant_violations`` counts the failures (``violations``
lists them, each with its seed); ``local_decision_fraction`` is the share of spend decisions
(executed or refused) made without waiting for the network.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Final

from node.identity.keys import NodeKey
from node.identity.keystore import read_keystore
from node.ledger import billing
from node.ledger.op import Op, OpRejected, sign_op
from node.ledger.state import State
from simulations import invariants
from simulations.ledger_spec import LEDGER_NETWORK, LedgerSpec
from simulations.metrics import json_safe
from simulations.report import RunResult
from simulations.scenario import Scenario

__all__ = ["LEDGER_CORE", "LedgerSim", "run_ledger", "run_ledger_seeds"]

LEDGER_CORE: Final = "billing"
NET: Final = LEDGER_NETWORK
# Virtual ms 0 is this unix ms: stamps and hold expiries look like real ones.
_BASE_MS: Final = 1_764_000_000_000
_MINT_SPREAD_MS: Final = 100.0
# A node keeps at most this many spends waiting for rights; more are refused at once.
_WAITS_MAX: Final = 64
_ISSUER_KEYSTORE: Final = (
    Path(__file__).resolve().parents[1] / "bootstrap/local/issuer-keystore.json"
)

(
    _DELIVER,
    _ORDER,
    _ASK,
    _TIMEOUT,
    _CRASH,
    _RESTART,
    _DRAW,
    _RELEASE,
    _EXPIRE,
    _BYZANTINE,
) = range(10)


@lru_cache(maxsize=1)
def _issuer() -> NodeKey:
    return read_keystore(_ISSUER_KEYSTORE, "local")


@dataclass
class _Hold:
    node: int
    hold_id: str
    expires_ms: int


class LedgerSim:
    """One billing run: the replicas, the nodes' drivers, the event loop."""

    def __init__(self, scenario: Scenario, trace: IO[str] | None) -> None:
        spec = scenario.ledger
        assert spec is not None
        self.spec: LedgerSpec = spec
        self.scenario = scenario
        self.rng = rng = random.Random(scenario.seed)
        n = scenario.nodes
        self.keys = [NodeKey(rng.randbytes(32)) for _ in range(n)]
        self.addrs = [k.address for k in self.keys]
        self.accounts = [NodeKey(rng.randbytes(32)) for _ in range(spec.accounts)]
        self.payees = ["0x" + rng.randbytes(20).hex() for _ in range(spec.payees)]
        self.states = [State(NET) for _ in range(n)]
        self.up = [True] * n
        self.down_until = [0.0] * n
        self.hlc = [(0, 0)] * n
        self.waits: list[dict[bytes, Op]] = [{} for _ in range(n)]
        self.to_accept: list[set[tuple[str, int]]] = [set() for _ in range(n)]
        self.side = [0] * n
        self.part_start = 0.0
        self.part_end = -1.0
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.digest = hashlib.blake2b(digest_size=16)
        self.trace = trace
        self.violations: list[dict[str, Any]] = []
        self.honest_entries: list[tuple[str, int]] = []
        self.byzantine_entries: list[tuple[str, int]] = []
        self.holds: list[_Hold] = []
        self.c: dict[str, int] = dict.fromkeys(
            (
                "orders",
                "mints",
                "decisions",
                "local_decisions",
                "refused_spends",
                "duplicates_noop",
                "wrong_node_refused",
                "asks_sent",
                "asks_lost",
                "grants",
                "accepts",
                "draws",
                "releases",
                "ops_signed",
                "ops_applied",
                "deliveries",
                "forged_attempted",
                "forged_refused",
                "events",
                "step_checks",
            ),
            0,
        )
        self._plan()

    # -- plumbing ------------------------------------------------------------------------------

    def push(self, at: float, kind: int, node: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, node, payload))

    def record(self, line: str) -> None:
        self.digest.update(line.encode())
        self.digest.update(b"\n")
        if self.trace is not None:
            self.trace.write(f"{self.now:.3f} {line}\n")

    def violation(self, invariant: str, detail: str) -> None:
        self.violations.append(
            {"seed": self.scenario.seed, "invariant": invariant, "detail": detail}
        )
        self.record(f"VIOLATION {invariant} {detail}")

    def lag(self) -> float:
        return self.rng.uniform(self.spec.gossip_ms_min, self.spec.gossip_ms_max)

    def stamp(self, v: int) -> tuple[int, int]:
        wall = _BASE_MS + int(self.now)
        last = self.hlc[v]
        self.hlc[v] = (wall, 0) if wall > last[0] else (last[0], last[1] + 1)
        return self.hlc[v]

    def apart(self, a: int, b: int) -> bool:
        return self.part_start <= self.now < self.part_end and self.side[a] != self.side[b]

    # -- the workload --------------------------------------------------------------------------

    def _plan(self) -> None:
        spec, rng, n = self.spec, self.rng, len(self.keys)
        issuer = _issuer()
        mint_end = _MINT_SPREAD_MS + spec.gossip_ms_max
        demand: dict[tuple[int, int], int] = {}
        orders: list[tuple[float, int, int, int, bool]] = []  # t, node, account, amount, hold
        for v in range(n):
            for _ in range(spec.orders_per_node):
                a = 0 if rng.random() < spec.hot_fraction else rng.randrange(len(self.accounts))
                amount = rng.randint(1, spec.amount_max)
                t = mint_end + rng.uniform(0.0, spec.spend_spread_ms)
                orders.append((t, v, a, amount, rng.random() < spec.hold_fraction))
                demand[(a, v)] = demand.get((a, v), 0) + amount
        provisioned: dict[tuple[int, int], int] = {}
        for (a, v), wanted in sorted(demand.items()):
            amount = math.ceil(spec.provision_factor * wanted)
            provisioned[(a, v)] = amount
            mint = billing.sign_order(
                issuer,
                NET,
                (_BASE_MS, self._order_clock()),
                "billing.order.mint",
                to=self.accounts[a].address,
                amount=amount,
                idempotency_key=f"genesis-{a}-{v}",
                node=self.addrs[v],
            )
            self.push(rng.uniform(0.0, _MINT_SPREAD_MS), _ORDER, v, mint)
        for k, (t, v, a, amount, is_hold) in enumerate(orders):
            self._submit(t, v, a, amount, is_hold, f"o{k}")
            if rng.random() < spec.overdraw_fraction:
                extra = provisioned[(a, v)] + rng.randint(1, spec.amount_max)
                self._submit(t + rng.uniform(0.0, 50.0), v, a, extra, False, f"x{k}")
        if spec.partition and n >= 2:
            start = mint_end + rng.uniform(0.0, spec.spend_spread_ms / 2)
            self.part_start, self.part_end = start, start + spec.partition_ms
            half = set(rng.sample(range(n), n // 2))
            self.side = [1 if v in half else 0 for v in range(n)]
        for v in rng.sample(range(n), min(spec.crashes, n)):
            self.push(mint_end + rng.uniform(0.0, spec.spend_spread_ms), _CRASH, v, None)
        if spec.byzantine and n >= 2:
            for k in range(3):
                self.push(mint_end + rng.uniform(0.0, spec.spend_spread_ms), _BYZANTINE, 0, k)

    def _order_clock(self) -> int:
        self.seq += 1
        return self.seq

    def _submit(self, t: float, v: int, a: int, amount: int, is_hold: bool, key: str) -> None:
        spec, rng = self.spec, self.rng
        owner = self.accounts[a]
        hlc = (_BASE_MS + int(t), self._order_clock())
        if is_hold:
            order = billing.sign_order(
                owner,
                NET,
                hlc,
                "billing.order.hold",
                payee=rng.choice(self.payees),
                amount=amount,
                expires_ms=_BASE_MS + int(t + rng.uniform(600.0, 1500.0)),
                idempotency_key=key,
                node=self.addrs[v],
            )
        else:
            others = [acct.address for acct in self.accounts if acct is not owner]
            order = billing.sign_order(
                owner,
                NET,
                hlc,
                "billing.order.transfer",
                to=rng.choice(others + self.payees),
                amount=amount,
                idempotency_key=key,
                node=self.addrs[v],
            )
        self.push(t, _ORDER, v, order)
        if rng.random() < spec.double_submit_probability:
            self.push(t + rng.uniform(0.0, 500.0), _ORDER, v, order)
            self.push(t + rng.uniform(0.0, 500.0), _ORDER, rng.randrange(len(self.keys)), order)
        if rng.random() < spec.reuse_key_probability and not is_hold:
            again = billing.sign_order(
                owner,
                NET,
                (hlc[0], self._order_clock()),
                "billing.order.transfer",
                to=rng.choice(self.payees),
                amount=amount,
                idempotency_key=key,
                node=self.addrs[v],
            )
            self.push(t + rng.uniform(0.0, 200.0), _ORDER, v, again)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        handlers = (
            self._deliver,
            self._order,
            self._ask,
            self._timeout,
            self._crash,
            self._restart,
            self._draw,
            self._release,
            self._expire,
            self._byzantine,
        )
        limit_ms = self.scenario.duration_s * 1000.0
        heap = self.heap
        while heap:
            at, _, kind, v, payload = heapq.heappop(heap)
            if at > limit_ms:
                self.violation("did_not_drain", f"events left after {limit_ms:.0f} ms")
                break
            self.now = at
            self.c["events"] += 1
            handlers[kind](v, payload)

    def _sign(self, v: int, kind: str, payload: dict[str, Any]) -> tuple[Op, dict[str, Any]]:
        op = sign_op(self.keys[v], NET, self.stamp(v), kind, payload)
        self.c["ops_signed"] += 1
        return op, State.check_op(op)

    def _commit(self, v: int, op: Op, checked: dict[str, Any]) -> str | None:
        """Apply a node's own op, check it, send it to every other replica."""
        state = self.states[v]
        try:
            state.apply(op, checked)
        except AssertionError as exc:
            self.violation("negative_rights", f"node {v}: {exc}")
            return None
        self.c["ops_applied"] += 1
        self._check_step(v)
        for u in range(len(self.keys)):
            if u != v:
                self.push(self.now + self.lag(), _DELIVER, u, (v, op, checked))
                if self.rng.random() < self.spec.duplicate_probability:
                    self.push(self.now + self.lag(), _DELIVER, u, (v, op, checked))
        return billing.entry_outcome(state, self.addrs[v], checked["seq"])

    def _execute(self, v: int, kind: str, payload: dict[str, Any], what: str) -> None:
        op, checked = self._sign(v, kind, payload)
        outcome = self._commit(v, op, checked)
        self.honest_entries.append((self.addrs[v], checked["seq"]))
        if outcome != "ok":
            self.violation("own_entry_invalid", f"node {v} {what} seq {checked['seq']}: {outcome}")
        self.record(f"n{v} {kind} seq={checked['seq']} {what}")

    def _check_step(self, v: int) -> None:
        self.c["step_checks"] += 1
        try:
            totals = billing.totals(self.states[v])
        except AssertionError as exc:
            self.violation("negative_rights", f"replica {v}: {exc}")
            return
        if totals["rights_min"] < 0:
            self.violation("negative_rights", f"replica {v}: a pair at {totals['rights_min']}")
        if totals["balance_min"] < 0:
            self.violation("negative_balance", f"replica {v}: at {totals['balance_min']}")
        if totals["minted"] != totals["available"] + totals["held"]:
            self.violation(
                "conservation",
                f"replica {v} at {self.now:.1f} ms: minted {totals['minted']} != available "
                f"{totals['available']} + held {totals['held']}",
            )

    def _deliver(self, u: int, message: tuple[int, Op, dict[str, Any]]) -> None:
        src, op, checked = message
        if not self.up[u]:
            # Anti-entropy brings it once the node is back.
            self.push(self.down_until[u] + self.lag(), _DELIVER, u, message)
            return
        if self.apart(src, u):
            self.push(self.part_end + self.lag(), _DELIVER, u, message)
            return
        self.c["deliveries"] += 1
        state = self.states[u]
        try:
            new = state.apply(op, checked)
        except AssertionError as exc:
            self.violation("negative_rights", f"replica {u}: {exc}")
            return
        if not new:
            return
        self.c["ops_applied"] += 1
        self._check_step(u)
        if op.kind == "billing.grant" and checked["to_node"] == self.addrs[u]:
            self.to_accept[u].add((op.author, checked["seq"]))
        if self.to_accept[u]:
            self._accept_grants(u)

    def _accept_grants(self, u: int) -> None:
        state = self.states[u]
        accepted = False
        for granter, seq in sorted(self.to_accept[u]):
            outcome = billing.entry_outcome(state, granter, seq)
            if outcome is None:
                continue  # the grant is pending on this replica: a gap in its chain
            self.to_accept[u].discard((granter, seq))
            if outcome == "ok":
                payload = {
                    "seq": billing.next_seq(state, self.addrs[u]),
                    "from_node": granter,
                    "from_seq": seq,
                }
                self._execute(u, "billing.accept", payload, f"accept {granter[:8]}:{seq}")
                self.c["accepts"] += 1
                accepted = True
        if accepted:
            self._retry_waits(u)

    def _retry_waits(self, v: int) -> None:
        for order_id, order in list(self.waits[v].items()):
            decision = billing.decide(self.states[v], self.addrs[v], order)
            if decision.action == "ask":
                continue
            del self.waits[v][order_id]
            if decision.action == "duplicate":
                self.c["duplicates_noop"] += 1
                continue
            assert decision.kind is not None
            assert decision.payload is not None
            self.c["decisions"] += 1
            self._execute(v, decision.kind, decision.payload, "after asks")
            self._after_spend(v, order)

    def _order(self, v: int, order: Op) -> None:
        if not self.up[v]:
            self.push(self.down_until[v] + 1.0, _ORDER, v, order)  # the client resends
            return
        self.c["orders"] += 1
        is_mint = order.kind == "billing.order.mint"
        try:
            decision = billing.decide(self.states[v], self.addrs[v], order)
        except billing.InsufficientCredits as exc:
            self.c["decisions"] += 1
            self.c["local_decisions"] += 1
            self.c["refused_spends"] += 1
            self.record(f"n{v} refused {order.id.hex()[:8]} required={exc.required}")
            return
        except OpRejected as exc:
            if exc.code == "wrong_node":
                self.c["wrong_node_refused"] += 1
                return
            raise
        if decision.action == "duplicate":
            self.c["duplicates_noop"] += 1
            return
        if decision.action == "ask":
            assert decision.plan is not None
            if order.id in self.waits[v]:
                self.c["duplicates_noop"] += 1  # a resend of a spend already waiting
                return
            if len(self.waits[v]) >= _WAITS_MAX:
                self.c["decisions"] += 1
                self.c["local_decisions"] += 1
                self.c["refused_spends"] += 1
                return
            self.waits[v][order.id] = order
            for ask in decision.plan.asks:
                peer = self.addrs.index(ask.peer)
                self.push(self.now + self.lag(), _ASK, peer, (v, ask))
                self.c["asks_sent"] += 1
            self.push(self.now + self.spec.ask_timeout_ms, _TIMEOUT, v, order)
            return
        assert decision.kind is not None
        assert decision.payload is not None
        if is_mint:
            self.c["mints"] += 1
        else:
            self.c["decisions"] += 1
            self.c["local_decisions"] += 1
        self._execute(v, decision.kind, decision.payload, f"order {order.id.hex()[:8]}")
        self._after_spend(v, order)

    def _after_spend(self, v: int, order: Op) -> None:
        if order.kind != "billing.order.hold":
            return
        rng = self.rng
        fields = order.payload
        hold = _Hold(v, order.id.hex(), fields["expires_ms"])
        self.holds.append(hold)
        left = fields["amount"]
        for _ in range(rng.randint(1, 3)):
            amount = rng.randint(1, max(1, left // 2))
            self.push(self.now + rng.uniform(50.0, 500.0), _DRAW, v, (hold, amount))
        expires_at = hold.expires_ms - _BASE_MS
        if rng.random() < 0.7:
            self.push(self.now + rng.uniform(500.0, 600.0), _RELEASE, v, hold)
        self.push(expires_at + 1.0, _EXPIRE, v, hold)

    def _ask(self, peer: int, message: tuple[int, billing.Ask]) -> None:
        v, ask = message
        if not self.up[peer] or self.apart(v, peer):
            self.c["asks_lost"] += 1
            return
        amount = billing.grant_answer(self.states[peer], self.addrs[peer], ask)
        if amount <= 0:
            return
        payload = {
            "seq": billing.next_seq(self.states[peer], self.addrs[peer]),
            "account": ask.account,
            "amount": amount,
            "to_node": self.addrs[v],
        }
        self._execute(peer, "billing.grant", payload, f"grant {amount} to n{v}")
        self.c["grants"] += 1

    def _timeout(self, v: int, order: Op) -> None:
        if self.waits[v].pop(order.id, None) is None:
            return  # carried out after the asks, or lost in a crash
        self.c["decisions"] += 1
        try:
            decision = billing.decide(self.states[v], self.addrs[v], order)
        except billing.InsufficientCredits:
            decision = billing.Decision("ask")
        if decision.action == "execute":
            assert decision.kind is not None
            assert decision.payload is not None
            self._execute(v, decision.kind, decision.payload, "at timeout")
            self._after_spend(v, order)
        elif decision.action == "duplicate":
            self.c["decisions"] -= 1
            self.c["duplicates_noop"] += 1
        else:
            self.c["refused_spends"] += 1
            self.record(f"n{v} refused after asks {order.id.hex()[:8]}")

    def _crash(self, v: int, _: Any) -> None:
        if not self.up[v]:
            return
        self.up[v] = False
        self.down_until[v] = self.now + self.spec.crash_ms
        self.record(f"crash n{v}")
        lost = list(self.waits[v].values())
        self.waits[v].clear()
        for order in lost:
            self.push(self.down_until[v] + 1.0, _ORDER, v, order)
        self.push(self.down_until[v], _RESTART, v, None)

    def _restart(self, v: int, _: Any) -> None:
        self.up[v] = True
        self.record(f"restart n{v}")
        for hold in self.holds:
            if hold.node == v:
                self._expire(v, hold)
        if self.to_accept[v]:
            self._accept_grants(v)

    def _draw(self, v: int, message: tuple[_Hold, int]) -> None:
        hold, amount = message
        if not self.up[v]:
            self.push(self.down_until[v] + 1.0, _DRAW, v, message)
            return
        state = self.states[v]
        view = billing.hold_view(state, hold.hold_id)
        wall = _BASE_MS + int(self.now)
        if view is None or view["resolved"] is not None or amount > view["remaining"]:
            return
        if wall >= view["expires_ms"]:
            return  # metering stops at expiry: a later draw would be invalid everywhere
        payload = {"seq": billing.next_seq(state, self.addrs[v]), "hold": hold.hold_id}
        self._execute(v, "billing.draw", {**payload, "amount": amount}, "draw")
        self.c["draws"] += 1

    def _release(self, v: int, hold: _Hold) -> None:
        if not self.up[v]:
            return  # the expiry releases it
        state = self.states[v]
        view = billing.hold_view(state, hold.hold_id)
        if view is None or view["resolved"] is not None:
            return
        payload = {"seq": billing.next_seq(state, self.addrs[v]), "hold": hold.hold_id}
        self._execute(v, "billing.release", payload, "release")
        self.c["releases"] += 1

    def _expire(self, v: int, hold: _Hold) -> None:
        if not self.up[v]:
            return  # released at restart
        state = self.states[v]
        if hold.hold_id in billing.due_releases(state, self.addrs[v], _BASE_MS + int(self.now)):
            self._release(v, hold)

    def _byzantine(self, v: int, k: int) -> None:
        """Node ``v`` (0) misbehaves: every replica must refuse or void what it signs."""
        if not self.up[v]:
            return
        state = self.states[v]
        hot = self.accounts[0]
        rng = self.rng
        if k == 0:
            # Carry out a real order the node's rights cannot cover, skipping decide.
            amount = billing.rights_of(state, self.addrs[v], hot.address) + rng.randint(1, 50)
            order = billing.sign_order(
                hot,
                NET,
                (_BASE_MS + int(self.now), self._order_clock()),
                "billing.order.transfer",
                to=self.payees[0],
                amount=amount,
                idempotency_key=f"byz-{self.scenario.seed}",
                node=self.addrs[v],
            )
            payload = {
                "seq": billing.next_seq(state, self.addrs[v]),
                "order": billing.embed_order(order),
            }
            op, checked = self._sign(v, "billing.transfer", payload)
            outcome = self._commit(v, op, checked)
            self.byzantine_entries.append((self.addrs[v], checked["seq"]))
            if outcome == "ok":
                self.violation("overdraw_accepted", f"node {v} seq {checked['seq']}")
            return
        if k == 1:
            forged = billing.sign_order(
                self.keys[v],
                NET,
                (_BASE_MS + int(self.now), self._order_clock()),
                "billing.order.mint",
                to=hot.address,
                amount=10**6,
                idempotency_key="forged",
                node=self.addrs[v],
            )
            kind, order_node = "billing.mint", v
        else:
            other = (v + 1) % len(self.keys)
            forged = billing.sign_order(
                hot,
                NET,
                (_BASE_MS + int(self.now), self._order_clock()),
                "billing.order.transfer",
                to=self.payees[0],
                amount=1,
                idempotency_key=f"elsewhere-{self.scenario.seed}",
                node=self.addrs[other],
            )
            kind, order_node = "billing.transfer", other
        payload = {
            "seq": billing.next_seq(state, self.addrs[v]),
            "order": billing.embed_order(forged),
        }
        op = sign_op(self.keys[v], NET, self.stamp(v), kind, payload)
        self.c["forged_attempted"] += 1
        # Any replica's ingress refuses it alike: it never reaches an applier.
        refused = 0
        for u in (v, (order_node + 1) % len(self.keys)):
            try:
                self.states[u].ingest(op.body, op.sig)
            except OpRejected:
                refused += 1
        if refused == 2:
            self.c["forged_refused"] += 1
        else:
            self.violation("forged_op_applied", f"node {v} {kind} seq {payload['seq']}")

    # -- after the run -------------------------------------------------------------------------

    def converge_checks(self) -> None:
        addresses = sorted(
            {a.address for a in self.accounts}
            | set(self.payees)
            | {billing.fee_account_of(NET) or ""} - {""}
        )
        reference: tuple[Any, ...] | None = None
        for u, state in enumerate(self.states):
            try:
                totals = billing.totals(state)
                balances = tuple(tuple(billing.balance(state, a).values()) for a in addresses)
            except AssertionError as exc:
                self.violation("negative_rights", f"replica {u} at the end: {exc}")
                continue
            outcomes = []
            for key in sorted(state.tables["billing"]):
                if not key.startswith("chain:"):
                    continue
                _, node, seq_text = key.split(":")
                outcome = billing.entry_outcome(state, node, int(seq_text))
                if outcome is None:
                    self.violation("pending_at_end", f"replica {u}: {key}")
                outcomes.append((key, outcome))
            if totals["minted"] != totals["available"] + totals["held"]:
                self.violation("conservation", f"replica {u} at the end: {totals}")
            if totals["rights_min"] < 0 or totals["balance_min"] < 0:
                self.violation("negative_rights", f"replica {u} at the end: {totals}")
            mine = (balances, tuple(outcomes))
            if reference is None:
                reference = mine
            elif mine != reference:
                self.violation("replicas_differ", f"replica {u} differs from replica 0")
        state = self.states[0]
        for node, seq in self.honest_entries:
            if billing.entry_outcome(state, node, seq) != "ok":
                self.violation("decision_undone", f"{node}:{seq} was ok where it was decided")
        for node, seq in self.byzantine_entries:
            if billing.entry_outcome(state, node, seq) == "ok":
                self.violation("overdraw_accepted", f"{node}:{seq}")
        self._once_checks(state)
        if self.c["forged_refused"] != self.c["forged_attempted"]:
            self.violation("forged_op_applied", "a forged op was applied somewhere")
        wall_end = _BASE_MS + int(self.now)
        for hold in self.holds:
            view = billing.hold_view(state, hold.hold_id)
            if view is not None and view["resolved"] is None and wall_end >= hold.expires_ms:
                self.violation("hold_unresolved", f"hold {hold.hold_id[:12]} past its expiry")

    def _once_checks(self, state: State) -> None:
        keys: dict[tuple[str, str], int] = {}
        releases: dict[str, int] = {}
        drawn: dict[str, int] = {}
        held: dict[str, int] = {}
        for key, record in state.tables["billing"].items():
            if not key.startswith("chain:"):
                continue
            _, node, seq_text = key.split(":")
            if billing.entry_outcome(state, node, int(seq_text)) != "ok":
                continue
            entry = record.fields.get("e")
            kind = entry["k"]
            if kind in ("mint", "transfer", "hold"):
                idem = (entry["by"], entry["key"])
                keys[idem] = keys.get(idem, 0) + 1
                if kind == "hold":
                    held[entry["hold"]] = entry["amount"]
            elif kind == "release":
                releases[entry["hold"]] = releases.get(entry["hold"], 0) + 1
            elif kind == "draw":
                drawn[entry["hold"]] = drawn.get(entry["hold"], 0) + entry["amount"]
        for idem, count in keys.items():
            if count > 1:
                self.violation("idempotency_key_twice", f"{idem} took effect {count} times")
        for hold_id, count in releases.items():
            if count > 1:
                self.violation("hold_resolved_twice", f"{hold_id[:12]} resolved {count} times")
        for hold_id, amount in drawn.items():
            if amount > held.get(hold_id, 0):
                self.violation("hold_overdrawn", f"{hold_id[:12]} drew {amount}")


def run_ledger(
    scenario: Scenario, core_name: str = LEDGER_CORE, *, trace: IO[str] | None = None
) -> RunResult:
    """Run a scenario with a ``[ledger]`` table; ``core_name`` only goes into ``reproduce``."""
    started = time.perf_counter()
    sim = LedgerSim(scenario, trace)
    sim.run()
    sim.converge_checks()
    wall_s = time.perf_counter() - started
    c = sim.c
    decisions = c["decisions"]
    report: dict[str, Any] = {
        "scenario": scenario.name,
        "core": LEDGER_CORE,
        "kind": "ledger",
        "nodes": len(sim.keys),
        "seed": scenario.seed,
        "invariant_violations": len(sim.violations),
        "local_decision_fraction": round(c["local_decisions"] / decisions, 6) if decisions else 1.0,
        "refused_spends": c["refused_spends"],
        "ops_per_s": round(c["ops_applied"] / wall_s, 1) if wall_s > 0 else None,
        **{k: v for k, v in c.items() if k != "refused_spends"},
        "accounts": len(sim.accounts),
        "holds": len(sim.holds),
        "minted": billing.totals(sim.states[0])["minted"],
        "sim_ms": round(sim.now, 3),
        "wall_s": round(wall_s, 4),
    }
    sim.record(" ".join(f"{k}={v}" for k, v in report.items() if k not in ("wall_s", "ops_per_s")))
    report["trace_hash"] = sim.digest.hexdigest()
    report["violations"] = sim.violations
    report = json_safe(report)
    # ``[check.min]`` bounds (local_decision_fraction) hold for a run of many seeds, where a
    # seed's 40 decisions are one sample: ``run_ledger_seeds`` checks them on the sum.
    check = replace(scenario.check, converged=False, min={})
    return RunResult(scenario, core_name, report, invariants.failures(check, report))


def run_ledger_seeds(scenario: Scenario, seeds: Iterable[int]) -> dict[str, Any]:
    """``formation-sim run ledger --seeds N``: every seed's run, summed into one report."""
    totals: dict[str, float] = {}
    violations: list[dict[str, Any]] = []
    failed: dict[str, list[str]] = {}
    runs = 0
    for seed in seeds:
        result = run_ledger(replace(scenario, seed=seed))
        runs += 1
        violations.extend(result.metrics["violations"])
        if result.failures:
            failed[str(seed)] = result.failures
        for name, value in result.metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                totals[name] = totals.get(name, 0) + value
    decisions = totals.get("decisions", 0)
    wall_s = totals.get("wall_s", 0.0)
    fraction = round(totals.get("local_decisions", 0) / decisions, 6) if decisions else 1.0
    summary = {
        "invariant_violations": len(violations),
        "local_decision_fraction": fraction,
        "refused_spends": totals.get("refused_spends", 0),
    }
    for failure in invariants.failures(replace(scenario.check, converged=False), summary):
        failed.setdefault("all", []).append(failure)
    summed = ("orders", "decisions", "local_decisions", "duplicates_noop", "wrong_node_refused")
    return {
        "scenario": scenario.name,
        "kind": "ledger",
        "nodes": scenario.nodes,
        "seeds": runs,
        "invariant_violations": violations,
        "local_decision_fraction": fraction,
        "refused_spends": int(totals.get("refused_spends", 0)),
        "ops_per_s": round(totals.get("ops_applied", 0) / wall_s, 1) if wall_s else None,
        **{name: int(totals.get(name, 0)) for name in summed},
        "ops_applied": int(totals.get("ops_applied", 0)),
        "asks_sent": int(totals.get("asks_sent", 0)),
        "grants": int(totals.get("grants", 0)),
        "forged_refused": int(totals.get("forged_refused", 0)),
        "wall_s": round(wall_s, 3),
        "seeds_failed": sorted(int(s) for s in failed if s != "all"),
        "checks_failed": failed,
    }
