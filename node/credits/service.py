"""The credits service: the thin Trio driver of the billing core on one node.

Theory of operation
-------------------
The billing core (``node.ledger.billing``) decides; this service carries its decisions out
with the node's key, and talks to peers. It owns the node's **chain**: every billing op this
node signs (``billing.mint``, ``.transfer``, ``.grant``, ``.accept``) is decided, numbered
and signed under one lock, so two requests can never sign one seq, and queued for the
**committer**, which stores the queued ops in seq order, all that wait in one commit (one
fsync; applied, then gossiped), and only then are their requests answered. A decision sees
the entries signed before it even while they wait (``billing.Signed``: the seqs they took,
the rights they take, the keys they carry out; never the rights they give), so the node never
signs an entry its replica would find invalid. A failed commit fails every queued op (none
was stored or sent, so their seqs are free again): a later op is never stored without the
earlier ones.

``carry_out(order)`` is a gateway request's path: ``decide`` on this replica, then

* ``execute``: sign the chain op carrying the order and queue it; the answer comes once it
  is stored;
* ``pending``: a queued op carries out the same key: wait for it, then answer as a replay;
* ``duplicate``: the order's idempotency key was carried out before: by this node's chain, or
  by any chain this replica has seen (``executed_anywhere``: a retry signed for another node,
  or the same order sent to another gateway). Answer the original outcome (op id, node, seq,
  amount, to) with ``replayed``, and write nothing. The same key with a different recipient or
  amount is ``idempotency_key_reused`` (409). Only a retry during a partition, before the
  original reached this node, can move credits twice (D18: a key is one node's);
* ``ask``: the node's rights do not cover the spend, but peers hold enough as this replica
  sees them. Ask each of ``plan.asks`` at once over ``/formation/rights/1.0.0``
  (``node.p2p.rights``), outside the lock (a peer asking us at the same time must be answered),
  for at most ``ask_wait_s`` in all; ingest the granters' chain ops the answers carry, accept
  every grant to this node, decide again, and refuse with ``InsufficientCredits`` (402) if the
  rights are still short. Nothing is written for a refused order but the accepts, which move
  the account's own rights to this node and change no balance.

``answer_ask`` is the peer's side: under the same lock, grant what this node holds of the
account, up to the ask (``grant_answer``), as a ``billing.grant`` in its chain, and answer with
it and the chain ops before it that the asker lacks. A grant that arrives after the asker gave
up is not lost: ``run`` accepts every grant addressed to this node that it sees (gossip brings
them), every ``accept_every_s``.

Bounds: at most ``ASKS_MAX`` asks per spend (the core's), ``ask_wait_s`` per spend,
``ACCEPTS_PER_ROUND`` accepts per round, ``COMMIT_OPS_MAX`` ops per commit (the queue itself
is bounded by the gateway's in-flight requests, each of which queues at most one op), and
the protocol's own (``node.p2p.rights``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio

from node.ledger import billing
from node.ledger.op import Op, OpRejected
from node.p2p.rights import Granted, RightsAsk, answer_frame

__all__ = [
    "ACCEPT_EVERY_S",
    "ASK_WAIT_S",
    "ChainBusy",
    "CreditsHost",
    "CreditsService",
    "CreditsStats",
    "KeyReused",
    "Outcome",
]

log = logging.getLogger(__name__)

# How long a spend waits, in all, for the peers it asked for rights: a loopback or LAN round
# trip and one fsync at the granter take milliseconds; past this the client gets its 402.
ASK_WAIT_S: Final = 2.0
ACCEPT_EVERY_S: Final = 1.0
ACCEPTS_PER_ROUND: Final = 64
# Chain ops stored in one commit at most (one fsync for all of them).
COMMIT_OPS_MAX: Final = 64
_ASK_OPS_MAX: Final = 32  # node.p2p.rights.OPS_MAX: the chain ops one answer carries


class ChainBusy(OpRejected):
    """This node's own chain has an entry it cannot evaluate yet (HTTP 503: retry)."""

    def __init__(self, node: str, why: str = "waits for a grant it accepted") -> None:
        super().__init__("busy", f"node {node}'s billing chain {why}; retry in a moment")


class KeyReused(OpRejected):
    """The idempotency key was used for a different movement (HTTP 409)."""


class CreditsHost(Protocol):
    """The node as the credits service sees it."""

    @property
    def address(self) -> str: ...

    @property
    def network(self) -> str: ...

    def read(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(state)`` under the replica's lock."""
        ...

    def sign(self, kind: str, payload: dict[str, Any]) -> Op:
        """Sign as the node with the replica's clock; store nothing (no await: the chain
        lock's holder signs and queues in one step)."""
        ...

    async def store(self, ops: list[Op]) -> None:
        """Store durably (one commit), apply and gossip the node's own ``ops``; raise if any
        is not taken."""
        ...

    async def ingest(self, ops: list[tuple[bytes, bytes]]) -> None:
        """Verify, store and apply peers' ops (a granter's chain)."""
        ...

    async def get_wire(self, op_ids: list[bytes]) -> list[tuple[bytes, bytes]]:
        """Stored ops by id (store I/O)."""
        ...

    async def ask(self, peer: str, account: str, amount: int, have: int) -> Granted | None:
        """``node.p2p.rights.ask``; None when the peer could not be reached or answered badly."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What carrying out an order did (or, ``replayed``, had done before)."""

    op_id: str  # 0x + hex of the chain op
    node: str
    seq: int
    kind: str  # billing.mint | billing.transfer
    author: str  # the order's signer (the issuer, or the paying account)
    to: str
    amount: int
    idempotency_key: str
    replayed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "node": self.node,
            "seq": self.seq,
            "kind": self.kind,
            "from": self.author,
            "to": self.to,
            "amount": self.amount,
            "idempotency_key": self.idempotency_key,
            "replayed": self.replayed,
        }


@dataclass
class CreditsStats:
    executed: int = 0
    replayed: int = 0
    refused: int = 0
    asks_sent: int = 0
    asks_unanswered: int = 0
    granted_in: int = 0  # credits of rights peers granted this node in answers
    grants_given: int = 0
    accepts: int = 0
    commits: int = 0  # of chain ops, each storing one or more


@dataclass(eq=False)
class _Queued:
    """A chain op signed and waiting for the committer; ``done`` once stored (or failed)."""

    op: Op
    entry: billing.Signed
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    taken: bool = False  # in a commit under way


class CreditsService:
    def __init__(self, host: CreditsHost, *, ask_wait_s: float = ASK_WAIT_S) -> None:
        self.host = host
        self.ask_wait_s = ask_wait_s
        self.stats = CreditsStats()
        # The chain: one signer of this node's billing ops at a time (decide, seq, sign, queue).
        self._lock = trio.Lock()
        # Signed, not applied yet, in seq order: the committer stores them in batches.
        self._queued: list[_Queued] = []
        self._wake = trio.Event()
        self._committing = False

    @property
    def address(self) -> str:
        return self.host.address

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The committer, and the accepts of grants addressed to this node, now and every
        ``ACCEPT_EVERY_S``."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._committer)
            self._committing = True
            task_status.started(self)
            while True:
                await self.accept_awaiting()
                await trio.sleep(ACCEPT_EVERY_S)

    # -- the chain ----------------------------------------------------------------------------

    def _signed(self) -> list[billing.Signed]:
        return [queued.entry for queued in self._queued]

    def _decide(self, order: Op) -> billing.Decision:
        signed = self._signed()
        decision: billing.Decision = self.host.read(
            lambda state: billing.decide(state, self.address, order, signed)
        )
        return decision

    def _next_seq(self) -> int:
        signed = self._signed()
        seq: int = self.host.read(lambda state: billing.next_seq(state, self.address, signed))
        return seq

    def _queue(self, kind: str, payload: dict[str, Any], entry: billing.Signed) -> _Queued:
        """Sign a chain op and queue it for the committer. Call under the chain lock, with no
        await between the decision and this, so the next decision sees it in ``_signed``."""
        queued = _Queued(self.host.sign(kind, payload), entry)
        self._queued.append(queued)
        self._wake.set()
        return queued

    async def _stored(self, queued: _Queued) -> Op:
        if not self._committing:  # no committer running (a test driving the service alone)
            await self._commit_once()
        await queued.done.wait()
        if queued.error is not None:
            raise ChainBusy(self.address, "could not store its last ops") from queued.error
        return queued.op

    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while any(not queued.taken for queued in self._queued):
                await self._commit_once()

    async def _commit_once(self) -> None:
        """Store the queued ops not yet taken, in seq order, in one commit. On a failure every
        queued op fails with it (none of them was stored or sent, so their seqs are free
        again): a later op must never be stored without the earlier ones."""
        batch = [queued for queued in self._queued if not queued.taken][:COMMIT_OPS_MAX]
        if not batch:
            return
        for queued in batch:
            queued.taken = True
        try:
            await self.host.store([queued.op for queued in batch])
        except Exception as exc:
            log.exception("credits: storing %d chain ops failed", len(batch))
            failed, self._queued = self._queued, []
            for queued in failed:
                queued.error = exc
                queued.done.set()
            return
        for queued in batch:
            self._queued.remove(queued)
            queued.done.set()
        self.stats.commits += 1

    # -- a gateway request ------------------------------------------------------------------

    async def carry_out(self, order: Op) -> Outcome:
        """Carry out a verified order (see the module docstring). Raises ``OpRejected`` (bad
        order, wrong node), ``KeyReused``, ``ChainBusy`` or ``billing.InsufficientCredits``."""
        fields = billing.check_order(order, self.host.network)
        me = self.address
        key = fields["idempotency_key"]
        deadline = trio.current_time() + self.ask_wait_s
        asked = False
        while True:
            # A key some chain already carried out (a retry signed for another node, say):
            # answer that outcome rather than move credits again.
            seen: tuple[str, int] | None = self.host.read(
                lambda state: billing.executed_anywhere(state, order.author, key)
            )
            if seen is not None:
                replay = self._replay(seen[0], order, fields)
                assert replay is not None
                return replay
            if fields["node"] != me:
                raise OpRejected(
                    "wrong_node",
                    f"the order names node {fields['node']}; send it to that node's gateway "
                    f"(this is {me}), or sign it again naming this node",
                    field="node",
                )
            waiting: _Queued | None = None
            plan: billing.SpendPlan | None = None
            async with self._lock:
                self._check_chain()
                try:
                    decision = self._decide(order)
                except billing.InsufficientCredits:
                    self.stats.refused += 1
                    raise
                if decision.action == "duplicate":
                    replay = self._replay(me, order, fields)
                    assert replay is not None  # decide said it was carried out here
                    return replay
                if decision.action == "pending":
                    waiting = next(q for q in self._queued if q.entry.key == (order.author, key))
                elif decision.action == "execute":
                    assert decision.kind is not None
                    assert decision.payload is not None
                    spends = decision.kind != "billing.mint"
                    entry = billing.Signed(
                        decision.payload["seq"],
                        account=order.author if spends else None,
                        amount=fields["amount"] if spends else 0,
                        key=(order.author, key),
                    )
                    kind = decision.kind
                    queued = self._queue(kind, decision.payload, entry)
                else:
                    plan = decision.plan
            if waiting is not None:  # the same key, being stored: then answer as a replay
                with contextlib.suppress(ChainBusy):
                    await self._stored(waiting)
                continue
            if decision.action == "execute":
                op = await self._stored(queued)
                self.stats.executed += 1
                return Outcome(
                    "0x" + op.id.hex(),
                    me,
                    entry.seq,
                    kind,
                    order.author,
                    fields["to"],
                    fields["amount"],
                    key,
                    replayed=False,
                )
            assert plan is not None
            if asked or trio.current_time() >= deadline:
                self.stats.refused += 1
                raise plan.refusal()
            asked = True
            await self._gather(plan, deadline)

    def _replay(self, node: str, order: Op, fields: dict[str, Any]) -> Outcome | None:
        """The original outcome of an order whose key ``node``'s chain carried out, or None."""
        key = fields["idempotency_key"]

        def find(state: Any) -> tuple[int, tuple[str, dict[str, Any]] | None] | None:
            seq = billing.executed_at(state, node, order.author, key)
            return None if seq is None else (seq, billing.chain_entry(state, node, seq))

        found = self.host.read(find)
        if found is None:
            return None
        seq, stored = found
        assert stored is not None
        op_id, entry = stored
        kind = "billing." + entry["k"]
        want = "billing." + order.kind[len("billing.order.") :]
        if (kind, entry["to"], entry["amount"]) != (want, fields["to"], fields["amount"]):
            raise KeyReused(
                "idempotency_key_reused",
                f"idempotency key {key!r} was used for {entry['k']} of {entry['amount']} to "
                f"{entry['to']} (op 0x{op_id}); use a new key for a different movement",
                field="idempotency_key",
            )
        self.stats.replayed += 1
        return Outcome(
            "0x" + op_id,
            node,
            seq,
            kind,
            order.author,
            entry["to"],
            entry["amount"],
            key,
            replayed=True,
        )

    def _check_chain(self) -> None:
        me = self.address

        def stalled(state: Any) -> bool:
            return billing.evaluated_through(state, me) != billing.next_seq(state, me) - 1

        if self.host.read(stalled):
            raise ChainBusy(me)

    async def _gather(self, plan: billing.SpendPlan, deadline: float) -> None:
        """Ask the plan's peers at once, until ``deadline``; land what they granted."""
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for ask in plan.asks:
                    nursery.start_soon(self._ask_one, ask)
        await self.accept_awaiting()

    async def _ask_one(self, ask: billing.Ask) -> None:
        have = self.host.read(lambda state: billing.evaluated_through(state, ask.peer))
        self.stats.asks_sent += 1
        got = await self.host.ask(ask.peer, ask.account, ask.amount, have)
        if got is None:
            self.stats.asks_unanswered += 1
            return
        self.stats.granted_in += got.granted
        if got.ops:
            await self.host.ingest(got.ops)

    async def accept_awaiting(self) -> int:
        """Accept the grants to this node not accepted yet (at most ``ACCEPTS_PER_ROUND``);
        returns once the accepts are stored."""
        me = self.address
        queued: list[_Queued] = []
        async with self._lock:
            signed = self._signed()
            awaiting: list[tuple[str, int]] = self.host.read(
                lambda state: billing.grants_awaiting(state, me, signed)
            )
            for granter, seq in awaiting[:ACCEPTS_PER_ROUND]:
                next_seq = self._next_seq()
                payload = {"seq": next_seq, "from_node": granter, "from_seq": seq}
                entry = billing.Signed(next_seq, accepts=(granter, seq))
                queued.append(self._queue("billing.accept", payload, entry))
        for one in queued:
            await self._stored(one)
        self.stats.accepts += len(queued)
        return len(queued)

    # -- a peer's ask -----------------------------------------------------------------------

    async def answer_ask(self, asker: str, ask: RightsAsk) -> bytes:
        """Grant ``asker`` what this node holds of ``ask.account``, up to ``ask.amount``; the
        answer frame of ``node.p2p.rights``, sent only once the grant is stored."""
        me = self.address
        if asker == me:
            return answer_frame(0, None, [])
        async with self._lock:
            signed = self._signed()

            def amount_of(state: Any) -> int:
                if billing.evaluated_through(state, me) != billing.next_seq(state, me) - 1:
                    return 0  # our own chain is not all counted: grant nothing now
                wanted = billing.Ask(me, ask.account, ask.amount)
                return billing.grant_answer(state, me, wanted, signed)

            amount: int = self.host.read(amount_of)
            if amount <= 0:
                return answer_frame(0, None, [])
            seq: int = self.host.read(lambda state: billing.next_seq(state, me, signed))
            payload = {"seq": seq, "account": ask.account, "amount": amount, "to_node": asker}
            entry = billing.Signed(seq, account=ask.account, amount=amount)
            queued = self._queue("billing.grant", payload, entry)
        op = await self._stored(queued)
        self.stats.grants_given += 1
        first = max(ask.have + 1, seq - _ASK_OPS_MAX + 1)

        def ids_of(state: Any) -> list[bytes]:
            found = [billing.chain_entry(state, me, k) for k in range(first, seq)]
            return [bytes.fromhex(entry[0]) for entry in found if entry is not None]

        ids: list[bytes] = self.host.read(ids_of)
        before = await self.host.get_wire(ids) if ids else []
        return answer_frame(amount, seq, [*before, (op.body, op.sig)])
