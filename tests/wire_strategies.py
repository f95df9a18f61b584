"""Hypothesis strategies for gossip packets (shared by the wire unit and fuzz tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from node.gossip.messages import (
    Ack,
    Attach,
    Detach,
    Gossip,
    IHave,
    IWant,
    Join,
    MemberState,
    MemberUpdate,
    Message,
    Nack,
    Packet,
    Ping,
    PingReq,
    Sync,
    Welcome,
    WireOp,
)

# Mostly one-byte varints (as in practice), plus the whole u64 range for the edges.
u64 = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1), st.just(2**64 - 1))
# At most 4 UTF-8 bytes per character, so 30 characters stay under NODE_ID_BYTES_MAX.
node_ids = st.one_of(
    st.integers(0, 10_000).map(lambda i: f"n{i}"),
    st.text(min_size=1, max_size=30),
)
addrs = st.one_of(st.just(""), st.text(max_size=60))
op_ids = st.binary(min_size=32, max_size=32)
members = st.builds(MemberUpdate, node_ids, addrs, st.sampled_from(MemberState), u64)


def member_lists(size_max: int) -> st.SearchStrategy[tuple[MemberUpdate, ...]]:
    return st.lists(members, max_size=size_max, unique_by=lambda m: m.node).map(tuple)


# Random bodies do not compress; repeated ones do, so both header flags get exercised.
op_bodies = st.one_of(
    st.binary(min_size=1, max_size=400),
    st.builds(
        lambda chunk, times: chunk * times, st.binary(min_size=1, max_size=16), st.integers(1, 80)
    ),
)
wire_ops: st.SearchStrategy[WireOp] = st.tuples(op_bodies, st.binary(min_size=65, max_size=65))
id_lists = st.lists(op_ids, max_size=40, unique=True).map(tuple)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, u64),
    st.builds(Ack, u64),
    st.builds(PingReq, u64, node_ids),
    st.builds(Nack, u64),
    st.builds(Join, addrs),
    st.builds(Welcome, member_lists(8)),
    st.builds(
        Gossip,
        st.lists(wire_ops, max_size=6, unique_by=lambda op: op[0]).map(tuple),
        st.booleans(),
    ),
    st.builds(IHave, id_lists),
    st.builds(Attach, id_lists),
    st.builds(IWant, id_lists),
    st.just(Detach()),
    st.builds(Sync, u64, st.binary(min_size=1, max_size=300)),
)

packets = st.builds(
    Packet,
    node_ids,
    st.lists(messages, max_size=8).map(tuple),
    member_lists(16),
)
