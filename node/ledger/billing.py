"""The billing ledger: credits that no replica can overspend, with no coordinator. Pure.

Long on purpose: the kinds, the chain evaluator and the spend decision are one rule (when a
chain entry is valid) and must change together.

Theory of operation
-------------------
Credits are integers of the smallest unit. An account's credits are **spend rights held by
nodes** (escrow, as in Balegas et al.'s bounded counter and AntidoteDB's ``bcounter``): the
pair ``(account, node)`` holds a non-negative amount, and only that node may decrease it.
Every movement is a signed op in the **chain of the node that carries it out**: a node numbers
its billing ops ``seq`` = 1, 2, 3... and a replica evaluates a node's chain in ``seq`` order,
whatever order the ops arrived in. Rule 1: **only a node's own chain changes the rights that
node holds** (the single exception, ``billing.accept``, adds rights to the accepting node's
own pair, from a grant that left the granter's chain). So when entry ``seq`` is evaluated,
everything it depends on is fixed: the entries before it in the same chain and, for an
accept, the granter's entry it names. Rule 2: an entry that would take a pair below zero (or
replays an idempotency key, or draws on a resolved hold...) is **invalid on every replica**,
has no effect, and the chain goes on; nothing is ever accepted and undone later. Rule 3: an
entry whose inputs have not arrived yet (a gap in the chain, an accept of a grant not yet
evaluated) is **pending**: it and everything after it in that chain count for nothing until
they arrive, so a lagging replica shows less, never something it must take back.

Who may do what is checked from the op alone (rule 2 of ``node.ledger.state``):

* a chain op (``billing.mint``, ``.transfer``, ``.hold``, ``.draw``, ``.release``, ``.grant``,
  ``.accept``) is signed by the node whose chain it is;
* a mint, transfer or hold carries the **order** behind it: an op signed by the account owner
  (or, for a mint, by one of the network's genesis issuers, ``bootstrap.profiles``), embedded
  as ``{"body", "sig"}`` and verified with ``decode_op``. The order names the node that must
  carry it out (``node``) and an ``idempotency_key``: a signed order can take effect in one
  chain only, and a key once per (order author, node), so a replayed or double-submitted order
  changes nothing. (Two *different* orders with one key sent to two nodes are two requests; no
  coordinator-free ledger can merge them during a partition, so the client signs one order per
  movement and retries that same order.)

Movements, each conserving credits (minted = the sum over accounts of available + held):

* ``mint`` (issuer order ``billing.order.mint``): ``+amount`` to ``(to, node)``.
* ``transfer`` (owner order ``billing.order.transfer``): ``(from, node) -> (to, node)``.
* ``hold`` (owner order ``billing.order.hold``): ``(from, node) -> held``, a hold with id = the
  order's op id, a ``payee`` and ``expires_ms``. ``draw`` moves ``amount`` of it to
  ``(payee, node)``, less the network fee (``FEE_BPS`` to the network's fee account, the first
  genesis issuer: an account like any other); draws at or after ``expires_ms`` (the entry's own
  stamp decides, so every replica agrees) are invalid. ``release`` returns what is left to
  ``(from, node)`` and resolves the hold, exactly once; the holder releases on stop, or for
  an expired hold (``due_releases``).
* ``grant`` moves ``(account, node)`` rights toward another node (in flight: still the account's
  available credits, spendable by nobody) and that node's ``accept`` takes them into its pair.

A spend that the node's own rights cannot cover is planned with ``plan_spend``: the peers to
ask for rights, from this replica's view. Peers answer with grants (``grant_answer`` says how
much); if not enough arrive in time the driver refuses with ``InsufficientCredits``
(``insufficient_credits``, required and available). ``decide`` is the whole driver step.

The evaluation is incremental and cached on each ``State`` (a memo of a pure function of the
applied ops: recomputing from scratch gives the same numbers). A node that signs two
different ops with one ``seq`` (only a faulty signer can) is recorded as a fork; the op with
the greater stamp counts, and the memo is rebuilt (as it is after a ``State.merge``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from bootstrap.profiles import PROFILES
from node.identity.keys import NodeKey, eip191_hash
from node.ledger.canonical import REQUEST_ENVELOPE_VERSION
from node.ledger.op import Op, OpRejected, decode_op, sign_op
from node.ledger.record import Kind, Tables
from node.ledger.schema import Addr, Int, Obj, Spec, Str, check_payload

if TYPE_CHECKING:
    from node.ledger.state import State

__all__ = [
    "ASKS_MAX",
    "CHAIN_KINDS",
    "FEE_BPS",
    "KINDS",
    "ORDER_KINDS",
    "ORDER_SPECS",
    "TABLES",
    "Ask",
    "Decision",
    "InsufficientCredits",
    "Signed",
    "SpendPlan",
    "balance",
    "chain_entry",
    "check_order",
    "decide",
    "due_releases",
    "embed_order",
    "entry_outcome",
    "evaluated_through",
    "executed",
    "executed_anywhere",
    "executed_at",
    "fee_account_of",
    "grant_answer",
    "grants_awaiting",
    "hold_view",
    "issuers_of",
    "next_seq",
    "plan_spend",
    "rights_of",
    "sign_chain",
    "sign_order",
    "totals",
]

TABLES: Final = ("billing",)

# The network's cut of every draw, in basis points (1/10,000), to its fee account.
FEE_BPS: Final = 250
# A spend asks at most this many peers at once: the ask is one message each, bounded.
ASKS_MAX: Final = 8
_ORDER_TEXT_MAX: Final = 16 * 1024
_SEQ_MAX: Final = 2**48

ORDER_KINDS: Final = ("billing.order.mint", "billing.order.transfer", "billing.order.hold")
CHAIN_KINDS: Final = (
    "billing.mint",
    "billing.transfer",
    "billing.hold",
    "billing.draw",
    "billing.release",
    "billing.grant",
    "billing.accept",
)

_AMOUNT = Int(required=True, value_min=1, value_max=2**62)
_KEY = Str(
    required=True,
    length_min=1,
    length_max=128,
    pattern=r"[A-Za-z0-9._:/-]+",
    hint="1-128 letters, digits or . _ : / -",
)
_HOLD_ID = Str(required=True, length_min=64, length_max=64, pattern=r"[0-9a-f]+", hint="hex id")
_SEQ = Int(required=True, value_min=1, value_max=_SEQ_MAX)
_ORDER = Obj(
    required=True,
    spec={
        "body": Str(required=True, length_min=2, length_max=_ORDER_TEXT_MAX),
        "sig": Str(
            required=True,
            length_min=132,
            length_max=132,
            pattern=r"0x[0-9a-f]{130}",
            hint="0x + 65-byte signature in hex",
        ),
    },
)

# The orders: what an owner (or issuer) signs; they travel only inside chain ops.
ORDER_SPECS: Final[dict[str, Spec]] = {
    "billing.order.mint": {
        "to": Addr(required=True),
        "amount": _AMOUNT,
        "idempotency_key": _KEY,
        "node": Addr(required=True),
    },
    "billing.order.transfer": {
        "to": Addr(required=True),
        "amount": _AMOUNT,
        "idempotency_key": _KEY,
        "node": Addr(required=True),
    },
    "billing.order.hold": {
        "payee": Addr(required=True),
        "amount": _AMOUNT,
        "expires_ms": Int(required=True, value_min=1),
        "idempotency_key": _KEY,
        "node": Addr(required=True),
    },
}
_ORDER_OF: Final = {
    "billing.mint": "billing.order.mint",
    "billing.transfer": "billing.order.transfer",
    "billing.hold": "billing.order.hold",
}


class InsufficientCredits(OpRejected):
    """A spend the rights in reach cannot cover (HTTP 402 at the gateway)."""

    def __init__(self, account: str, required: int, available: int, available_here: int) -> None:
        super().__init__(
            "insufficient_credits",
            f"{account} needs {required} credits; {available} are available in all, of which "
            f"this node holds {available_here} and its peers did not cover the rest: add "
            "credits or spend less",
            field="amount",
        )
        self.account = account
        self.required = required
        self.available = available
        self.available_here = available_here


# -- the network's genesis ---------------------------------------------------------------------


def issuers_of(network: str) -> tuple[str, ...]:
    """The genesis issuers of ``network`` (its profile's ``issuers``; unknown: none)."""
    for profile in PROFILES.values():
        if profile.network == network:
            return profile.issuers
    return ()


def fee_account_of(network: str) -> str | None:
    """The network's fee account (its first issuer), or None: then draws pay no fee."""
    issuers = issuers_of(network)
    return issuers[0] if issuers else None


# -- authorization (pure functions of the op) -------------------------------------------------


def embed_order(order: Op) -> dict[str, str]:
    """The ``order`` field of a chain op that carries out ``order``."""
    return {"body": order.body.decode(), "sig": "0x" + order.sig.hex()}


def sign_order(key: NodeKey, network: str, hlc: tuple[int, int], kind: str, **fields: Any) -> Op:
    """An order signed by ``key`` (an owner or issuer): ``kind`` is one of ``ORDER_KINDS``."""
    return sign_op(key, network, hlc, kind, fields)


def sign_chain(key: NodeKey, network: str, hlc: tuple[int, int], kind: str, **payload: Any) -> Op:
    """A chain op of ``key``'s node; an ``order`` given as an ``Op`` is embedded."""
    if isinstance(payload.get("order"), Op):
        payload["order"] = embed_order(payload["order"])
    return sign_op(key, network, hlc, kind, payload)


def check_order(order: Op, network: str) -> dict[str, Any]:
    """The validated payload of an order (already verified). Raises ``OpRejected``."""
    spec = ORDER_SPECS.get(order.kind)
    if spec is None:
        raise OpRejected(
            "invalid_payload",
            f"an order's kind is one of {', '.join(ORDER_KINDS)}; got {order.kind!r}",
            field="order",
        )
    payload = check_payload(order.kind, spec, order.payload)
    if order.kind == "billing.order.mint":
        if order.author not in issuers_of(network):
            raise OpRejected(
                "unauthorized",
                f"billing.mint: {order.author} is not a genesis issuer of network {network!r}; "
                "only the issuers in its profile (bootstrap/profiles.py) mint",
            )
    elif order.kind == "billing.order.transfer" and payload["to"] == order.author:
        raise OpRejected(
            "invalid_payload", "billing.transfer: 'to' is the paying account itself", field="to"
        )
    return payload


def _open_order(op: Op, payload: dict[str, Any]) -> tuple[Op, dict[str, Any]]:
    raw = payload["order"]
    order = decode_op(raw["body"].encode(), bytes.fromhex(raw["sig"][2:]), op.net)
    want = _ORDER_OF[op.kind]
    if order.kind != want:
        raise OpRejected(
            "invalid_payload", f"{op.kind} carries a {want} order, not {order.kind}", field="order"
        )
    fields = check_order(order, op.net)
    if fields["node"] != op.author:
        raise OpRejected(
            "unauthorized",
            f"{op.kind}: the order names node {fields['node']}; only that node carries it out, "
            f"not {op.author}",
        )
    return order, fields


def _authorize_order_op(op: Op, payload: dict[str, Any]) -> None:
    _open_order(op, payload)


def _authorize_grant(op: Op, payload: dict[str, Any]) -> None:
    if payload["to_node"] == op.author:
        raise OpRejected(
            "invalid_payload", "billing.grant: to_node is the granting node itself", field="to_node"
        )


def _authorize_accept(op: Op, payload: dict[str, Any]) -> None:
    if payload["from_node"] == op.author:
        raise OpRejected(
            "invalid_payload",
            "billing.accept: a node cannot accept its own grant",
            field="from_node",
        )


def _allow(op: Op, payload: dict[str, Any]) -> None:
    """Draws and releases name a hold; whether it is the signer's is decided in its chain."""


# -- appliers: file the entry under (node, seq) -----------------------------------------------


def _chain_key(node: str, seq: int) -> str:
    return f"chain:{node}:{seq}"


def _entry_of(op: Op, payload: dict[str, Any]) -> dict[str, Any]:
    if op.kind in _ORDER_OF:
        return _order_entry(op.kind, op.wall_ms, payload["order"]["body"])
    entry: dict[str, Any] = {"k": op.kind[len("billing.") :], "at": op.wall_ms}
    entry.update({k: v for k, v in payload.items() if k != "seq"})
    return entry


@lru_cache(maxsize=4096)
def _order_entry(op_kind: str, wall_ms: int, order_text: str) -> dict[str, Any]:
    """The entry of a chain op carrying an order: every replica reads the same op, so the
    parse is memoized (the dict is shared and never mutated)."""
    kind = op_kind[len("billing.") :]
    entry: dict[str, Any] = {"k": kind, "at": wall_ms}
    # Verified when the op was checked: read the order back without a signature check.
    body = order_text.encode()
    order = json.loads(body)
    if order.get("v") == REQUEST_ENVELOPE_VERSION:
        # A signed gateway request (``node.ledger.request_op``): its fields are the JSON body
        # the user signed (the billing routes take the body as it is).
        fields = json.loads(order["req"]["body"])
    else:
        fields = order["payload"]
    entry.update(by=order["author"], key=fields["idempotency_key"], amount=fields["amount"])
    if kind == "hold":
        entry.update(payee=fields["payee"].lower(), expires_ms=fields["expires_ms"])
        entry["hold"] = eip191_hash(body).hex()  # the order's op id
    else:
        entry["to"] = fields["to"].lower()
    return entry


def _apply_chain(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    key = _chain_key(op.author, payload["seq"])
    record = state.record("billing", key)
    ours = record.fields.get("id")
    op_hex = op.id.hex()
    if ours is not None and ours != op_hex:
        # Two ops for one seq: only a faulty signer makes them. Record the fork (an evaluated
        # chain must be rebuilt); the greater stamp counts, on every replica. The marker is
        # the smaller stamp of the two, so any arrival order leaves one marker.
        theirs = record.fields.stamp_of("id")
        marker = op.stamp if theirs is None else min(op.stamp, theirs)
        state.record("billing", "index:forks").first(key, marker)
    record.set_fields({"e": _entry_of(op, payload), "id": op_hex}, op.stamp)
    state.record("billing", "index:nodes").first(op.author, op.stamp)
    # Tell the memo which chain grew, so it need not look at the others (a hint only).
    hints = vars(state).get(_HINTS_ATTR)
    if hints is not None:
        hints.add(op.author)


# -- evaluation ---------------------------------------------------------------------------------


@dataclass
class _Hold:
    account: str
    node: str
    payee: str
    amount: int
    expires_ms: int
    remaining: int
    resolved: str | None = None  # "released" | "expired"


@dataclass
class _Grant:
    account: str
    amount: int
    to_node: str
    accepted: bool = False


@dataclass
class _Book:
    """Everything evaluated so far from one state's chains."""

    network: str
    op_count: int = -1
    forks_seen: int = 0
    rights: dict[tuple[str, str], int] = field(default_factory=dict)  # (account, node)
    available: dict[str, int] = field(default_factory=dict)  # rights + in flight, per account
    in_flight: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    spent: dict[str, int] = field(default_factory=dict)
    earned: dict[str, int] = field(default_factory=dict)
    minted_total: int = 0
    next: dict[str, int] = field(default_factory=dict)  # node -> first unevaluated seq
    top: dict[str, int] = field(default_factory=dict)  # node -> greatest seq present
    keys: set[tuple[str, str, str]] = field(default_factory=set)  # (node, order author, key)
    # (node, order author, key) -> the seq of the entry that carried the order out
    key_seq: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (order author, key) -> the first (node, seq) that carried one out, in any chain
    key_first: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    grants: dict[tuple[str, int], _Grant] = field(default_factory=dict)
    # to_node -> (granter, seq) of its grants not accepted yet (what its driver must land)
    unaccepted: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    outcomes: dict[tuple[str, int], str] = field(default_factory=dict)  # "ok" or a reason
    table_len: int = 0
    # granter -> chains pending on one of its grants
    waiting: dict[str, set[str]] = field(default_factory=dict)

    def _add(self, account: str, node: str, delta: int) -> None:
        pair = (account, node)
        value = self.rights.get(pair, 0) + delta
        # Rule 2 keeps this true; a broken one is our bug, never a peer's.
        assert value >= 0, f"rights of {pair} would be {value}"
        self.rights[pair] = value
        self.available[account] = self.available.get(account, 0) + delta

    def _bump(self, table: dict[str, int], account: str, delta: int) -> None:
        table[account] = table.get(account, 0) + delta

    def evaluate(self, node: str, seq: int, entry: dict[str, Any]) -> str | None:
        """The outcome of one entry (applying it if "ok"), or None while it is pending."""
        kind = entry["k"]
        if kind == "accept":
            source = (entry["from_node"], entry["from_seq"])
            if self.next.get(source[0], 1) <= source[1]:
                return None  # the grant is not evaluated here yet
            grant = self.grants.get(source)
            if grant is None:
                return "no_such_grant"
            if grant.to_node != node:
                return "grant_not_for_this_node"
            if grant.accepted:
                return "grant_already_accepted"
            grant.accepted = True
            self.unaccepted.get(node, set()).discard(source)
            self._bump(self.in_flight, grant.account, -grant.amount)
            self._bump(self.available, grant.account, -grant.amount)
            self._add(grant.account, node, grant.amount)
            return "ok"
        if kind in ("mint", "transfer", "hold"):
            idem = (node, entry["by"], entry["key"])
            if idem in self.keys:
                return "duplicate_idempotency_key"
            amount = entry["amount"]
            if kind != "mint" and self.rights.get((entry["by"], node), 0) < amount:
                return "insufficient_rights"
            self.keys.add(idem)
            self.key_seq[idem] = seq
            self.key_first.setdefault((entry["by"], entry["key"]), (node, seq))
            if kind == "mint":
                self.minted_total += amount
                self._add(entry["to"], node, amount)
            elif kind == "transfer":
                self._add(entry["by"], node, -amount)
                self._add(entry["to"], node, amount)
                self._bump(self.spent, entry["by"], amount)
                self._bump(self.earned, entry["to"], amount)
            else:
                if entry["hold"] in self.holds:
                    return "duplicate_hold"
                self._add(entry["by"], node, -amount)
                self._bump(self.held, entry["by"], amount)
                self.holds[entry["hold"]] = _Hold(
                    entry["by"], node, entry["payee"], amount, entry["expires_ms"], amount
                )
            return "ok"
        if kind in ("draw", "release"):
            hold = self.holds.get(entry["hold"])
            if hold is None or hold.node != node:
                return "no_such_hold_here"
            if hold.resolved is not None:
                return "hold_resolved"
            if kind == "release":
                hold.resolved = "expired" if entry["at"] >= hold.expires_ms else "released"
                self._bump(self.held, hold.account, -hold.remaining)
                self._add(hold.account, node, hold.remaining)
                hold.remaining = 0
                return "ok"
            amount = entry["amount"]
            if entry["at"] >= hold.expires_ms:
                return "hold_expired"
            if amount > hold.remaining:
                return "exceeds_hold"
            hold.remaining -= amount
            self._bump(self.held, hold.account, -amount)
            self._bump(self.spent, hold.account, amount)
            fee_account = fee_account_of(self.network)
            fee = amount * FEE_BPS // 10_000 if fee_account is not None else 0
            self._add(hold.payee, node, amount - fee)
            self._bump(self.earned, hold.payee, amount - fee)
            if fee_account is not None and fee:
                self._add(fee_account, node, fee)
                self._bump(self.earned, fee_account, fee)
            return "ok"
        if kind == "grant":
            account, amount = entry["account"], entry["amount"]
            if self.rights.get((account, node), 0) < amount:
                return "insufficient_rights"
            self._add(account, node, -amount)
            self._bump(self.in_flight, account, amount)
            self._bump(self.available, account, amount)
            self.grants[(node, seq)] = _Grant(account, amount, entry["to_node"])
            self.unaccepted.setdefault(entry["to_node"], set()).add((node, seq))
            return "ok"
        raise AssertionError(f"unknown billing entry kind {kind!r}")

    def refresh(self, state: State, hints: set[str]) -> None:
        if state.op_count == self.op_count:
            return
        self.op_count = state.op_count
        table = state.tables["billing"]
        nodes_record = table.get("index:nodes")
        if nodes_record is None:
            return
        # A fresh book looks at every chain; after that, only at the chains the appliers
        # announced (``_book`` starts afresh when entries came in another way).
        work = set(nodes_record.firsts) if self.table_len == 0 else set(hints)
        self.table_len = len(table)
        hints.clear()
        while work:
            node = work.pop()
            seq = start = self.next.get(node, 1)
            prefix = f"chain:{node}:"
            while True:
                record = table.get(prefix + str(seq))
                if record is None:
                    break
                outcome = self.evaluate(node, seq, record.fields.get("e"))
                if outcome is None:
                    # Pending on a grant: look again when the granter's chain moves.
                    entry = record.fields.get("e")
                    self.waiting.setdefault(entry["from_node"], set()).add(node)
                    break
                self.outcomes[(node, seq)] = outcome
                seq += 1
            self.next[node] = seq
            top = max(self.top.get(node, 0), seq - 1)
            while prefix + str(top + 1) in table:
                top += 1
            self.top[node] = top
            if seq > start and node in self.waiting:
                work |= self.waiting.pop(node)


# The memo lives on the State it describes (and dies with it): the evaluated book, and the
# chains that grew since it was last refreshed.
_BOOK_ATTR: Final = "_billing_book"
_HINTS_ATTR: Final = "_billing_hints"


def _book(state: State) -> _Book:
    memo = vars(state)
    book: _Book | None = memo.get(_BOOK_ATTR)
    if book is not None and book.op_count == state.op_count:
        return book
    table = state.tables["billing"]
    forks = table.get("index:forks")
    forks_count = len(forks.firsts) if forks is not None else 0
    # More new entries than the appliers announced: ops came in another way (``State.merge``,
    # which may also have replaced a forked entry): evaluate from scratch.
    bypassed = book is not None and len(table) - book.table_len > len(memo[_HINTS_ATTR])
    if book is None or book.forks_seen != forks_count or bypassed:
        book = memo[_BOOK_ATTR] = _Book(state.network, forks_seen=forks_count)
        memo[_HINTS_ATTR] = set()
    book.refresh(state, memo[_HINTS_ATTR])
    return book


# -- reading ----------------------------------------------------------------------------------


def balance(state: State, address: str) -> dict[str, int]:
    """``{available, held, spent, earned}`` of an account, as this replica evaluates it.

    ``available`` includes rights in flight between nodes (granted, not yet accepted)."""
    book = _book(state)
    address = address.lower()
    return {
        "available": book.available.get(address, 0),
        "held": book.held.get(address, 0),
        "spent": book.spent.get(address, 0),
        "earned": book.earned.get(address, 0),
    }


def rights_of(state: State, node: str, account: str) -> int:
    """What ``node`` may spend of ``account`` now."""
    return _book(state).rights.get((account.lower(), node.lower()), 0)


def totals(state: State) -> dict[str, int]:
    """Conservation (``minted`` must equal ``available + held`` summed over accounts) and the
    lowest (account, node) rights and account balance."""
    book = _book(state)
    return {
        "minted": book.minted_total,
        "available": sum(book.available.values()),
        "held": sum(book.held.values()),
        "rights_min": min(book.rights.values(), default=0),
        # The lowest available or held amount of any account (never below zero).
        "balance_min": min(
            min(book.available.values(), default=0), min(book.held.values(), default=0)
        ),
    }


def next_seq(state: State, node: str, signed: Sequence[Signed] = ()) -> int:
    """The seq of ``node``'s next chain op: one past the greatest this replica holds, or past
    the entries ``node`` signed and has not applied yet (``signed``)."""
    top = _book(state).top.get(node.lower(), 0)
    return max([top, *(entry.seq for entry in signed)]) + 1


@dataclass(frozen=True)
class Signed:
    """An entry a node signed in its chain whose write is not applied yet: a driver that
    stores several entries in one commit decides the next ones as if they were applied, but
    counts only what they take (never what they give) until they are."""

    seq: int
    account: str | None = None  # whose rights the entry takes from the node (transfer, grant)
    amount: int = 0
    key: tuple[str, str] | None = None  # (order author, idempotency key) it carries out
    accepts: tuple[str, int] | None = None  # (granter, seq) of the grant it accepts


def _live(state: State, node: str, signed: Sequence[Signed]) -> list[Signed]:
    """The entries of ``signed`` this replica has not evaluated yet."""
    first = _book(state).next.get(node, 1)
    return [entry for entry in signed if entry.seq >= first]


def _reserved(live: Sequence[Signed], account: str) -> int:
    return sum(entry.amount for entry in live if entry.account == account)


def entry_outcome(state: State, node: str, seq: int) -> str | None:
    """``"ok"``, the reason an entry was invalid, or None (pending or absent here)."""
    return _book(state).outcomes.get((node.lower(), seq))


def executed(state: State, node: str, author: str, idempotency_key: str) -> bool:
    """Whether ``node``'s chain already carried out ``author``'s order with that key."""
    return (node.lower(), author.lower(), idempotency_key) in _book(state).keys


def executed_at(state: State, node: str, author: str, idempotency_key: str) -> int | None:
    """The seq of the entry in ``node``'s chain that carried out ``author``'s order with that
    key, or None: what a replayed order is answered with."""
    return _book(state).key_seq.get((node.lower(), author.lower(), idempotency_key))


def executed_anywhere(state: State, author: str, idempotency_key: str) -> tuple[str, int] | None:
    """(node, seq) of an entry in any chain this replica has evaluated that carried out an
    order of ``author`` with that key, or None. Not a guarantee (two nodes in a partition can
    each carry out one), but it lets a gateway answer a retry sent to another node as a
    replay instead of moving credits again."""
    return _book(state).key_first.get((author.lower(), idempotency_key))


def chain_entry(state: State, node: str, seq: int) -> tuple[str, dict[str, Any]] | None:
    """(op id hex, entry) of ``node``'s chain entry ``seq`` as this replica holds it."""
    record = state.tables["billing"].get(_chain_key(node.lower(), seq))
    if record is None:
        return None
    return record.fields.get("id"), record.fields.get("e")


def evaluated_through(state: State, node: str) -> int:
    """The last seq of ``node``'s chain this replica has evaluated (0: none): every entry up
    to it counts here; one past it is missing or pending."""
    return _book(state).next.get(node.lower(), 1) - 1


def grants_awaiting(
    state: State, node: str, signed: Sequence[Signed] = ()
) -> list[tuple[str, int]]:
    """(granter, seq) of the valid grants to ``node`` it has not accepted yet (nor signed an
    accept of, in ``signed``), oldest first: rights in flight only ``node`` can land."""
    node = node.lower()
    accepting = {entry.accepts for entry in _live(state, node, signed)}
    return sorted(_book(state).unaccepted.get(node, set()) - accepting)


def hold_view(state: State, hold_id: str) -> dict[str, Any] | None:
    hold = _book(state).holds.get(hold_id)
    if hold is None:
        return None
    return {
        "hold_id": hold_id,
        "account": hold.account,
        "node": hold.node,
        "payee": hold.payee,
        "amount": hold.amount,
        "remaining": hold.remaining,
        "expires_ms": hold.expires_ms,
        "resolved": hold.resolved,
    }


def due_releases(state: State, node: str, now_ms: int) -> list[str]:
    """Holds ``node`` carries whose expiry has passed and that are not resolved: release them."""
    node = node.lower()
    return sorted(
        hold_id
        for hold_id, hold in _book(state).holds.items()
        if hold.node == node and hold.resolved is None and now_ms >= hold.expires_ms
    )


# -- deciding a spend -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """Ask ``peer`` for ``amount`` of ``account``'s rights (it answers with a billing.grant)."""

    peer: str
    account: str
    amount: int


@dataclass(frozen=True)
class SpendPlan:
    """How ``node`` can cover ``required`` of ``account``: locally, or by these asks."""

    account: str
    required: int
    available_here: int
    available: int
    asks: tuple[Ask, ...]

    @property
    def local(self) -> bool:
        return self.available_here >= self.required

    @property
    def coverable(self) -> bool:
        """Whether the peers asked hold enough, as this replica sees them."""
        return self.available_here + sum(a.amount for a in self.asks) >= self.required

    def refusal(self) -> InsufficientCredits:
        return InsufficientCredits(self.account, self.required, self.available, self.available_here)


def plan_spend(
    state: State, node: str, account: str, required: int, reserved: int = 0
) -> SpendPlan:
    """Cover ``required`` from ``node``'s own rights (less ``reserved``, what entries it
    signed and has not applied take), else ask the peers holding the most."""
    book = _book(state)
    node, account = node.lower(), account.lower()
    here = max(0, book.rights.get((account, node), 0) - reserved)
    asks: list[Ask] = []
    if here < required:
        deficit = required - here
        holders = sorted(
            ((amount, peer) for (acct, peer), amount in book.rights.items() if acct == account),
            key=lambda item: (-item[0], item[1]),
        )
        for amount, peer in holders:
            if deficit <= 0 or len(asks) == ASKS_MAX:
                break
            if peer == node or amount <= 0:
                continue
            take = min(amount, deficit)
            asks.append(Ask(peer, account, take))
            deficit -= take
    return SpendPlan(account, required, here, book.available.get(account, 0), tuple(asks))


def grant_answer(state: State, node: str, ask: Ask, signed: Sequence[Signed] = ()) -> int:
    """How much ``node`` grants for ``ask``: what it holds of the account (less what its
    ``signed`` entries take), up to the ask."""
    node = node.lower()
    held = _book(state).rights.get((ask.account, node), 0)
    return max(0, min(ask.amount, held - _reserved(_live(state, node, signed), ask.account)))


@dataclass(frozen=True)
class Decision:
    """What the node does with an order: ``execute`` (sign ``kind`` with ``payload`` in its
    chain), ``duplicate`` (already carried out: answer as before, change nothing),
    ``pending`` (being carried out: wait for it, then decide again) or ``ask``
    (``plan`` lists the peers to ask; refuse with ``plan.refusal()`` if none answer in time)."""

    action: str
    kind: str | None = None
    payload: dict[str, Any] | None = None
    plan: SpendPlan | None = None


def decide(state: State, node: str, order: Op, signed: Sequence[Signed] = ()) -> Decision:
    """The driver's step for a verified order at ``node``, with the entries it signed and
    has not applied yet (``signed``). Raises ``OpRejected`` for an order that is not for this
    node or not valid, and ``InsufficientCredits`` when no peer holds enough to ask for.
    ``pending``: an entry in ``signed`` carries out the same key; decide again once it is
    applied (it is then a ``duplicate``)."""
    fields = check_order(order, state.network)
    node = node.lower()
    if fields["node"] != node:
        raise OpRejected(
            "wrong_node",
            f"the order names node {fields['node']}; send it to that node (this is {node})",
        )
    if executed(state, node, order.author, fields["idempotency_key"]):
        return Decision("duplicate")
    live = _live(state, node, signed)
    if any(entry.key == (order.author, fields["idempotency_key"]) for entry in live):
        return Decision("pending")
    kind = "billing." + order.kind[len("billing.order.") :]
    payload = {"seq": next_seq(state, node, live), "order": embed_order(order)}
    if kind == "billing.mint":
        return Decision("execute", kind, payload)
    reserved = _reserved(live, order.author)
    plan = plan_spend(state, node, order.author, fields["amount"], reserved)
    if plan.local:
        return Decision("execute", kind, payload, plan)
    if not plan.coverable:
        raise plan.refusal()
    return Decision("ask", plan=plan)


# -- the kinds --------------------------------------------------------------------------------

KINDS: Final[list[Kind]] = [
    Kind("billing.mint", {"seq": _SEQ, "order": _ORDER}, _authorize_order_op, _apply_chain),
    Kind("billing.transfer", {"seq": _SEQ, "order": _ORDER}, _authorize_order_op, _apply_chain),
    Kind("billing.hold", {"seq": _SEQ, "order": _ORDER}, _authorize_order_op, _apply_chain),
    Kind("billing.draw", {"seq": _SEQ, "hold": _HOLD_ID, "amount": _AMOUNT}, _allow, _apply_chain),
    Kind("billing.release", {"seq": _SEQ, "hold": _HOLD_ID}, _allow, _apply_chain),
    Kind(
        "billing.grant",
        {
            "seq": _SEQ,
            "account": Addr(required=True),
            "amount": _AMOUNT,
            "to_node": Addr(required=True),
        },
        _authorize_grant,
        _apply_chain,
    ),
    Kind(
        "billing.accept",
        {"seq": _SEQ, "from_node": Addr(required=True), "from_seq": _SEQ},
        _authorize_accept,
        _apply_chain,
    ),
]
