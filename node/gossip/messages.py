"""The gossip protocol's messages and the effects the pure core asks its driver to perform.

Theory of operation
-------------------
Everything one node sends another in one transmission is a ``Packet``: the sender's id, the
membership updates it piggybacks (SWIM disseminates membership on traffic that flows anyway)
and a tuple of protocol messages. Batching several messages into one packet is what keeps the
message count per op low: a node flushes what it has for a peer every ``flush_interval_s``,
not once per op.

The core never touches a socket or a clock. Its methods take ``now`` (seconds, float) and
return a list of effects:

``Send(to, packet)``
    transmit ``packet`` to node ``to`` (the driver knows how to reach it; ``Packet`` is encoded
    by ``node.gossip.wire``).
``Deliver(ops, sender)``
    ops received from ``sender`` that this node does not hold yet: verify, store and apply
    them, then report which were accepted with ``GossipCore.on_ops_accepted`` (only accepted
    ops are forwarded, so an invalid op dies at its first honest hop).
``Notify(event, node)``
    a membership change (``up``, ``suspect``, ``dead``, ``left``) for logs, metrics and tests.

Node ids are strings (the node's address in the real node, ``"n17"`` in the simulator); the
driver maps them to transport addresses (``MemberUpdate.addr``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Ack",
    "Attach",
    "Deliver",
    "Detach",
    "Effect",
    "Gossip",
    "IHave",
    "IWant",
    "Join",
    "MemberState",
    "MemberUpdate",
    "Message",
    "Nack",
    "Notify",
    "Packet",
    "Ping",
    "PingReq",
    "Send",
    "Sync",
    "Welcome",
    "WireOp",
]

# An op as it travels: (body, sig); see node/ledger/op.py.
WireOp = tuple[bytes, bytes]


class MemberState(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3  # left on purpose: like DEAD, but not a failure


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """A claim about one member, ordered by (incarnation, state) as in SWIM."""

    node: str
    addr: str
    state: MemberState
    incarnation: int
    # For SUSPECT: the member that raised the suspicion. Lifeguard shrinks a suspicion timer
    # with *independent* confirmations; relayed copies of one suspicion must not count twice.
    origin: str = ""


# -- membership (SWIM + Lifeguard) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to probe ``target`` for us (SWIM indirect probe)."""

    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: the relay could not reach the target in time (so the relay itself works)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Join:
    """A new node's first message to a seed: 'add me and tell me who is here'."""

    addr: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """A seed's answer to ``Join``: a bounded sample of members (peer exchange)."""

    members: tuple[MemberUpdate, ...]


# -- dissemination (two-level rendezvous tree, D7) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gossip:
    """Ops pushed eagerly along the broadcast tree (or sent on request: ``eager=False``)."""

    ops: tuple[WireOp, ...]
    eager: bool = True


@dataclass(frozen=True, slots=True)
class IHave:
    """Lazy push: ids the sender holds; a receiver missing one for long enough asks (``IWant``)."""

    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Attach:
    """'I am your child: push every op to me from now on' (a leaf attaching to its parent).

    ``Attach(())`` is what the core sends; ``ids``, if any, are also sent back once.
    """

    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class IWant:
    """'Send me these ids' without changing the tree (anti-entropy found we lack them)."""

    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Detach:
    """'I am no longer your child': a leaf detaching from its old parent."""


# -- anti-entropy ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sync:
    """One flight of op-set reconciliation; ``body`` is a ``node.ledger.digest`` message."""

    session: int
    body: bytes


Message = (
    Ping | Ack | PingReq | Nack | Join | Welcome | Gossip | IHave | IWant | Attach | Detach | Sync
)


@dataclass(frozen=True, slots=True)
class Packet:
    sender: str
    messages: tuple[Message, ...] = ()
    updates: tuple[MemberUpdate, ...] = ()


# -- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    packet: Packet


@dataclass(frozen=True, slots=True)
class Deliver:
    ops: tuple[WireOp, ...]
    sender: str


@dataclass(frozen=True, slots=True)
class Notify:
    event: str  # "up" | "suspect" | "dead" | "left"
    node: str
    detail: dict[str, object] = field(default_factory=dict)


Effect = Send | Deliver | Notify
