"""Properties of the op-set digest and its reconciliation protocol.

Sets are drawn two ways: small sets straight from Hypothesis (ids and wall times it can shrink
to a minimal failing case), and larger ones from a seeded generator whose shape Hypothesis
picks (how many ops are shared or one-sided, and how their times spread: one hour, years,
one millisecond, the whole 64-bit range, or only its edges), so buckets split and the
expansion runs several levels deep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.ledger.digest import (
    DEPTH,
    ENTRIES_MAX,
    FANOUT,
    IDS_MAX,
    WALL_MS_MAX,
    BadMessage,
    Digest,
    Entry,
    IdList,
    Message,
    Missing,
    OpDigest,
    ReconcileConfig,
    decode,
    key_path,
    reconcile,
)

T0_MS = 1_760_000_000_000
YEAR_MS = 365 * 86_400_000
EDGES_MS = (0, 1, 2**32, 2**63 - 1, 2**63, WALL_MS_MAX - 1, WALL_MS_MAX)
SPREADS = ("hour", "years", "one_ms", "full64", "edges", "mixed")

Item = tuple[bytes, int]


def wall_ms(rng: random.Random, spread: str) -> int:
    if spread == "mixed":
        spread = rng.choice(SPREADS[:-1])
    if spread == "hour":
        return T0_MS + rng.randrange(3_600_000)
    if spread == "years":
        return T0_MS - rng.randrange(5 * YEAR_MS)
    if spread == "one_ms":
        return T0_MS
    if spread == "full64":
        return rng.randrange(WALL_MS_MAX + 1)
    return rng.choice(EDGES_MS)


@dataclass(frozen=True)
class Scenario:
    common: list[Item]
    a_only: list[Item]
    b_only: list[Item]

    def digests(self) -> tuple[OpDigest, OpDigest]:
        return (
            OpDigest.from_items(self.common + self.a_only),
            OpDigest.from_items(self.common + self.b_only),
        )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    rng = random.Random(draw(st.integers(0, 2**32)))
    spread = draw(st.sampled_from(SPREADS))
    sizes = st.one_of(st.integers(0, 40), st.sampled_from([0, 100, 300]))
    n_common = draw(st.one_of(st.integers(0, 50), st.sampled_from([500, 1_500])))
    n_a, n_b = draw(sizes), draw(sizes)
    items = [(rng.randbytes(32), wall_ms(rng, spread)) for _ in range(n_common + n_a + n_b)]
    return Scenario(items[:n_common], items[n_common : n_common + n_a], items[n_common + n_a :])


configs = st.builds(
    ReconcileConfig,
    ids_threshold=st.sampled_from([1, 4, 16, 33, IDS_MAX]),
    entries_budget=st.sampled_from([FANOUT, 100, ENTRIES_MAX]),
)

# Small raw sets: Hypothesis shrinks ids and times; a flag says which side holds each op.
small_ids = st.binary(min_size=32, max_size=32)
small_walls = st.one_of(st.sampled_from(EDGES_MS), st.integers(0, WALL_MS_MAX))
small_items = st.lists(
    st.tuples(small_ids, small_walls, st.sampled_from(["both", "a", "b"])),
    max_size=80,
    unique_by=lambda item: item[0],
)


def split(raw: list[tuple[bytes, int, str]]) -> Scenario:
    def pick(side: str) -> list[Item]:
        return [(op_id, wall) for op_id, wall, where in raw if where == side]

    return Scenario(pick("both"), pick("a"), pick("b"))


def assert_reconciles(
    scenario: Scenario, config: ReconcileConfig, config_b: ReconcileConfig
) -> None:
    a, b = scenario.digests()
    result = reconcile(a, b, bytes(8), config, config_b)
    assert result.ids_a_lacks == {op_id for op_id, _ in scenario.b_only}
    assert result.ids_b_lacks == {op_id for op_id, _ in scenario.a_only}
    # Each flight goes a digit deeper or ends a branch.
    assert result.rounds <= DEPTH + 4
    walls = dict(scenario.common + scenario.a_only + scenario.b_only)
    for op_id in result.ids_a_lacks:
        a.add(op_id, walls[op_id])
    for op_id in result.ids_b_lacks:
        b.add(op_id, walls[op_id])
    assert a.root() == b.root()


@given(scenarios(), configs, configs)
def test_reconcile_finds_exactly_the_symmetric_difference(
    scenario: Scenario, config: ReconcileConfig, config_b: ReconcileConfig
) -> None:
    assert_reconciles(scenario, config, config_b)


@settings(max_examples=300)
@given(small_items, configs)
def test_reconcile_small_sets_exactly(
    raw: list[tuple[bytes, int, str]], config: ReconcileConfig
) -> None:
    assert_reconciles(split(raw), config, config)


@given(scenarios(), st.integers(0, 2**32))
def test_equal_sets_have_equal_roots_and_different_sets_do_not(
    scenario: Scenario, seed: int
) -> None:
    a, b = scenario.digests()
    shuffled = scenario.common + scenario.a_only
    random.Random(seed).shuffle(shuffled)
    a_again = OpDigest()
    for op_id, wall in shuffled:
        a_again.add(op_id, wall)
    assert a_again.root() == a.root()
    assert a_again.summary() == a.summary()
    assert (a.root() == b.root()) == (not scenario.a_only and not scenario.b_only)


@settings(max_examples=300)
@given(small_items, st.randoms(use_true_random=False))
def test_insertion_order_does_not_matter(
    raw: list[tuple[bytes, int, str]], rnd: random.Random
) -> None:
    items = [(op_id, wall) for op_id, wall, _ in raw]
    shuffled = list(items)
    rnd.shuffle(shuffled)
    first, second = OpDigest(), OpDigest()
    for op_id, wall in items:
        first.add(op_id, wall)
    for op_id, wall in shuffled + shuffled[: len(shuffled) // 2]:
        second.add(op_id, wall)
    assert first.root() == second.root() == OpDigest.from_items(shuffled).root()
    assert first.ids_under() == second.ids_under()


@given(scenarios(), st.data())
def test_any_node_summary_matches_a_brute_force_count(
    scenario: Scenario, data: st.DataObject
) -> None:
    items = scenario.common + scenario.a_only
    digest = OpDigest.from_items(items)
    paths = [key_path(op_id, wall) for op_id, wall in items] or [(0,) * DEPTH]
    for _ in range(5):
        full = data.draw(st.sampled_from(paths))
        path = full[: data.draw(st.integers(0, DEPTH))]
        inside = [item for item, p in zip(items, paths, strict=False) if p[: len(path)] == path]
        count, fingerprint = digest.stat(path)
        assert (count, fingerprint) == (len(inside), OpDigest.from_items(inside).root())
        assert sorted(digest.ids_under(path)) == sorted(op_id for op_id, _ in inside)
        assert sum(c for _, c, _ in digest.summary(path)) == (count if len(path) < DEPTH else 0)


# --- wire messages --------------------------------------------------------------------------

digits = st.integers(0, FANOUT - 1)
paths = st.lists(digits, max_size=6).map(tuple)
fingerprints = st.binary(min_size=8, max_size=8)
salts = st.binary(min_size=8, max_size=8)
sorted_ids = st.lists(small_ids, max_size=40, unique=True).map(lambda ids: tuple(sorted(ids)))


@st.composite
def digests(draw: st.DrawFn) -> Digest:
    path = draw(paths)
    depth = draw(st.integers(0, 3))
    rels = draw(
        st.lists(
            st.lists(digits, min_size=depth, max_size=depth).map(tuple),
            unique=True,
            max_size=1 if depth == 0 else 60,
        )
    )
    counts = st.integers(1, 2**64 - 1)
    entries = tuple(Entry(rel, draw(counts), draw(fingerprints)) for rel in sorted(rels))
    return Digest(path, draw(salts), entries)


messages: st.SearchStrategy[Message] = st.one_of(
    digests(),
    st.builds(IdList, paths, sorted_ids),
    sorted_ids.filter(bool).map(Missing),
)


def decodes_canonically_or_refuses(data: bytes) -> None:
    """Any input either decodes to the one message that encodes to it, or is refused with a
    reason; nothing else (IndexError, a hang, a message that re-encodes differently)."""
    message: Message | None = None
    reason = ""
    try:
        message = decode(data)
    except BadMessage as exc:
        reason = str(exc)
    if message is None:
        assert reason
    else:
        assert message.encode() == data


@settings(max_examples=500)
@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    data = message.encode()
    assert decode(data) == message
    assert message.encoded_size() == len(data)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_garbage_is_refused_or_is_a_canonical_message(data: bytes) -> None:
    decodes_canonically_or_refuses(data)


@settings(max_examples=500)
@given(messages, st.data())
def test_corrupted_messages_are_refused_or_canonical(message: Message, data: st.DataObject) -> None:
    raw = bytearray(message.encode())
    how = data.draw(st.sampled_from(["flip", "truncate", "append", "tag"]))
    if how == "flip":
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif how == "append":
        raw += data.draw(st.binary(min_size=1, max_size=40))
    else:
        raw[0] = data.draw(st.integers(0, 255))
    decodes_canonically_or_refuses(bytes(raw))


@settings(max_examples=50)
@given(st.integers(ENTRIES_MAX + 1, 4 * ENTRIES_MAX), st.integers(IDS_MAX + 1, 10 * IDS_MAX))
def test_oversized_counts_are_refused_before_reading_the_body(entries: int, ids: int) -> None:
    def varint(value: int) -> bytes:
        out = bytearray()
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        return bytes([*out, value])

    for data in (
        b"\x01\x00" + bytes(8) + varint(entries),
        b"\x02\x00" + varint(ids),
        b"\x03" + varint(ids),
    ):
        with pytest.raises(BadMessage, match="limit"):
            decode(data)
