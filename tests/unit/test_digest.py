"""OpDigest (the summarised op-id trie) and its reconciliation messages."""

from __future__ import annotations

import random

import pytest

from node.ledger.digest import (
    BUCKET_IDS_MAX,
    DEPTH,
    ENTRIES_MAX,
    IDS_MAX,
    MESSAGE_BYTES_MAX,
    SALT_BYTES,
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
    opening,
    reconcile,
    respond,
)

T0_MS = 1_760_000_000_000
SALT = bytes(range(SALT_BYTES))
FP = bytes(8)


def make_items(
    rng: random.Random, n: int, lo_ms: int = T0_MS, hi_ms: int = T0_MS + 3_600_000
) -> list[tuple[bytes, int]]:
    return [(rng.randbytes(32), rng.randrange(lo_ms, hi_ms + 1)) for _ in range(n)]


def digest_of(items: list[tuple[bytes, int]]) -> OpDigest:
    return OpDigest.from_items(items)


def check_reconcile(
    common: list[tuple[bytes, int]],
    a_only: list[tuple[bytes, int]],
    b_only: list[tuple[bytes, int]],
    **kwargs: object,
) -> int:
    a = digest_of(common + a_only)
    b = digest_of(common + b_only)
    result = reconcile(a, b, **kwargs)  # type: ignore[arg-type]
    assert result.ids_a_lacks == {op_id for op_id, _ in b_only}
    assert result.ids_b_lacks == {op_id for op_id, _ in a_only}
    return result.rounds


# --- the digest -----------------------------------------------------------------------------


def test_add_is_idempotent_and_counts() -> None:
    digest = OpDigest()
    op_id = bytes(range(32))
    assert digest.add(op_id, T0_MS) is True
    root = digest.root()
    assert digest.add(op_id, T0_MS) is False
    assert len(digest) == 1
    assert op_id in digest
    assert bytes(32) not in digest
    assert digest.root() == root
    assert digest.ids_under() == [op_id]


def test_empty_digests_agree_and_differ_from_any_nonempty_one() -> None:
    assert OpDigest().root() == OpDigest().root()
    assert len(OpDigest().root()) == 16
    one = OpDigest()
    one.add(bytes(32), 0)
    assert one.root() != OpDigest().root()


@pytest.mark.parametrize(
    ("op_id", "wall_ms", "match"),
    [
        (b"short", T0_MS, "32 bytes"),
        ("ab" * 32, T0_MS, "32 bytes"),
        (bytes(32), -1, "wall_ms"),
        (bytes(32), WALL_MS_MAX + 1, "wall_ms"),
        (bytes(32), True, "wall_ms"),
        (bytes(32), float(T0_MS), "wall_ms"),
    ],
)
def test_bad_items_are_refused_and_change_nothing(
    op_id: object, wall_ms: object, match: str
) -> None:
    digest = digest_of(make_items(random.Random(1), 50))
    root, size = digest.root(), len(digest)
    with pytest.raises(ValueError, match=match):
        digest.add(op_id, wall_ms)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        OpDigest.from_items([(op_id, wall_ms)])  # type: ignore[list-item]
    assert (digest.root(), len(digest)) == (root, size)


def test_an_id_seen_with_another_wall_ms_is_refused() -> None:
    digest = OpDigest()
    digest.add(bytes(32), T0_MS)
    root = digest.root()
    with pytest.raises(ValueError, match="same op"):
        digest.add(bytes(32), T0_MS + 1)
    assert digest.root() == root
    with pytest.raises(ValueError, match="same op"):
        OpDigest.from_items([(bytes(32), 1), (bytes(32), 2)])


def test_from_items_matches_repeated_add_and_ignores_duplicates() -> None:
    items = make_items(random.Random(2), 2_000)
    added = OpDigest()
    for op_id, wall_ms in items:
        added.add(op_id, wall_ms)
    built = OpDigest.from_items(items + items[:100])
    assert len(built) == len(added) == 2_000
    assert built.root() == added.root()
    assert built.summary() == added.summary()
    assert built.ids_under() == added.ids_under()


def test_insertion_order_does_not_matter() -> None:
    items = make_items(random.Random(3), 1_000)
    forward, backward = OpDigest(), OpDigest()
    for op_id, wall_ms in items:
        forward.add(op_id, wall_ms)
    for op_id, wall_ms in reversed(items):
        backward.add(op_id, wall_ms)
    assert forward.root() == backward.root()


def test_ids_under_is_in_time_order_and_partitions_by_prefix() -> None:
    items = make_items(random.Random(4), 500, T0_MS - 10**9, T0_MS)
    digest = digest_of(items)
    assert digest.ids_under() == [op_id for op_id, _ in sorted(items, key=lambda i: (i[1], i[0]))]
    total = 0
    for digit, count, fingerprint in digest.summary(()):
        assert digest.stat((digit,)) == (count, fingerprint)
        total += count
    assert total == len(items)


def test_summaries_inside_buckets_match_a_brute_force_count() -> None:
    rng = random.Random(5)
    # 20 ops in one millisecond: a single bucket, split only by id digits when queried.
    items = make_items(rng, 20, T0_MS, T0_MS)
    digest = digest_of(items)
    for op_id, wall_ms in items[:5]:
        full = key_path(op_id, wall_ms)
        for depth in (11, 12, 13, DEPTH):
            path = full[:depth]
            expected = digest_of([i for i in items if key_path(*i)[:depth] == path])
            count, fingerprint = digest.stat(path)
            assert count == len(expected)
            assert (count, fingerprint) == (len(expected), expected.root())
        assert digest.ids_under(full) == [op_id]
        assert digest.summary(full) == []


def test_a_burst_in_one_millisecond_splits_by_id_bits() -> None:
    items = make_items(random.Random(6), 10 * BUCKET_IDS_MAX, T0_MS, T0_MS)
    digest = OpDigest()
    for op_id, wall_ms in items:
        digest.add(op_id, wall_ms)
    time_path = key_path(items[0][0], T0_MS, 10)
    children = digest.summary(time_path)
    assert sum(count for _, count, _ in children) == len(items)
    assert digest.root() == digest_of(items).root()


def test_extreme_wall_times_have_distinct_paths_and_reconcile() -> None:
    rng = random.Random(7)
    edges = [0, 1, 2**32, 2**63 - 1, 2**63, WALL_MS_MAX - 1, WALL_MS_MAX]
    items = [(rng.randbytes(32), wall_ms) for wall_ms in edges]
    assert key_path(items[0][0], 0)[:11] != key_path(items[-1][0], WALL_MS_MAX)[:11]
    assert check_reconcile(items[:3], items[3:5], items[5:]) <= 4
    assert check_reconcile([], items, []) <= 3


def test_key_path_orders_like_wall_ms_then_id() -> None:
    low, high = bytes(32), b"\xff" * 32
    assert key_path(high, 5) < key_path(low, 6)
    assert key_path(low, 5) < key_path(high, 5)
    assert len(key_path(low, 5)) == DEPTH
    assert key_path(low, 5, 3) == (0, 0, 0)


# --- reconciliation -------------------------------------------------------------------------


def test_identical_sets_take_one_small_flight() -> None:
    items = make_items(random.Random(8), 3_000)
    result = reconcile(digest_of(items), digest_of(list(reversed(items))))
    assert result.ids_a_lacks == result.ids_b_lacks == frozenset()
    assert result.rounds == 1
    assert result.bytes_exchanged < 40


def test_two_empty_sets_agree() -> None:
    result = reconcile(OpDigest(), OpDigest())
    assert (result.ids_a_lacks, result.ids_b_lacks, result.rounds) == (frozenset(), frozenset(), 1)


@pytest.mark.parametrize("side", ["a", "b"])
def test_an_empty_side_receives_everything(side: str) -> None:
    items = make_items(random.Random(9), 3_000)
    a_only, b_only = ([], items) if side == "a" else (items, [])
    rounds = check_reconcile([], a_only, b_only)
    assert rounds <= 3


def test_disjoint_one_sided_and_overlapping_sets() -> None:
    rng = random.Random(10)
    common = make_items(rng, 5_000)
    check_reconcile([], make_items(rng, 700), make_items(rng, 900))
    check_reconcile(common, make_items(rng, 40), [])
    check_reconcile(common, [], make_items(rng, 40))
    check_reconcile(common, make_items(rng, 3), make_items(rng, 4))


def test_ops_spread_over_years_with_a_recent_difference() -> None:
    rng = random.Random(11)
    years_ms = 5 * 365 * 86_400_000
    common = make_items(rng, 4_000, T0_MS - years_ms, T0_MS)
    check_reconcile(common, make_items(rng, 5), make_items(rng, 5, T0_MS - years_ms, T0_MS))


def test_ops_concentrated_in_one_millisecond() -> None:
    rng = random.Random(12)
    common = make_items(rng, 3_000, T0_MS, T0_MS)
    check_reconcile(common, make_items(rng, 17, T0_MS, T0_MS), make_items(rng, 2, T0_MS, T0_MS))


def test_small_differences_cost_little() -> None:
    rng = random.Random(13)
    common = make_items(rng, 20_000)
    a = digest_of([*common, *make_items(rng, 2)])
    b = digest_of([*common, *make_items(rng, 2)])
    result = reconcile(a, b)
    assert len(result.ids_a_lacks) == len(result.ids_b_lacks) == 2
    assert result.bytes_exchanged < 20_000 * 32 // 20
    assert result.rounds <= 7


def test_opening_expanded_saves_the_root_flight() -> None:
    rng = random.Random(14)
    common = make_items(rng, 5_000)
    plain = check_reconcile(common, make_items(rng, 3), make_items(rng, 3))
    expanded = check_reconcile(common, make_items(rng, 3), make_items(rng, 3), open_expanded=True)
    assert expanded == plain - 1


def test_sides_with_different_configs_interoperate() -> None:
    rng = random.Random(15)
    common = make_items(rng, 6_000)
    for config, config_b in [
        (ReconcileConfig(1, 64), ReconcileConfig(IDS_MAX, ENTRIES_MAX)),
        (ReconcileConfig(IDS_MAX, 64), ReconcileConfig(1, 64)),
        (ReconcileConfig(40, 200), ReconcileConfig(8, 70)),
    ]:
        check_reconcile(
            common,
            make_items(rng, 30),
            make_items(rng, 60),
            config=config,
            config_b=config_b,
        )


def test_respond_does_not_change_the_digest() -> None:
    rng = random.Random(16)
    digest = digest_of(make_items(rng, 500))
    root = digest.root()
    messages: list[Message] = [
        Digest((), SALT, ()),
        opening(digest_of(make_items(rng, 50)), SALT),
        IdList((0,), (bytes(32),)),
        Missing((bytes(32), b"\x01" * 32)),
    ]
    for message in messages:
        respond(digest, message)
    assert digest.root() == root
    assert len(digest) == 500


def test_a_peer_with_nothing_is_sent_every_id_in_bounded_messages() -> None:
    digest = digest_of(make_items(random.Random(17), 2_500))
    step = respond(digest, Digest((), SALT, ()))
    assert all(isinstance(m, Missing) and len(m.ids) <= IDS_MAX for m in step.replies)
    assert sum(len(m.ids) for m in step.replies if isinstance(m, Missing)) == 2_500


def test_entries_about_nodes_we_do_not_have_ask_for_them() -> None:
    digest = digest_of(make_items(random.Random(18), 100))
    nowhere = Digest((63, 63), SALT, (Entry((1,), 5, FP), Entry((2, 3), 1, FP)))
    step = respond(digest, nowhere)
    assert step.replies == [Digest((63, 63), SALT, ())]
    assert step.lacking == []


def test_a_missing_list_reports_only_what_we_lack() -> None:
    items = make_items(random.Random(19), 10)
    digest = digest_of(items)
    new = b"\xee" * 32
    step = respond(digest, Missing(tuple(sorted([items[0][0], new]))))
    assert step == ([], [new])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ids_threshold": 0}, "ids_threshold"),
        ({"ids_threshold": IDS_MAX + 1}, "ids_threshold"),
        ({"entries_budget": 63}, "entries_budget"),
        ({"entries_budget": ENTRIES_MAX + 1}, "entries_budget"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReconcileConfig(**kwargs)


def test_opening_needs_a_salt_of_the_right_size() -> None:
    with pytest.raises(BadMessage, match="salt"):
        opening(OpDigest(), b"short")


# --- wire messages --------------------------------------------------------------------------


def sorted_ids(seed: int, n: int) -> tuple[bytes, ...]:
    rng = random.Random(seed)
    return tuple(sorted(rng.randbytes(32) for _ in range(n)))


def sample_messages() -> list[Digest | IdList | Missing]:
    ids = sorted_ids(20, 5)
    return [
        Digest((), SALT, ()),
        Digest((1, 2, 3), SALT, (Entry((), 7, FP),)),
        Digest(
            (0,),
            SALT,
            (Entry((1,), 1, FP), Entry((2, 9), 300, b"\x01" * 8), Entry((5,), 2**64 - 1, FP)),
        ),
        IdList((), ()),
        IdList((4,) * DEPTH, ids),
        Missing(ids),
        Missing(sorted_ids(21, IDS_MAX)),
    ]


@pytest.mark.parametrize("message", sample_messages())
def test_messages_round_trip(message: Digest | IdList | Missing) -> None:
    data = message.encode()
    assert decode(data) == message
    assert message.encoded_size() == len(data) <= MESSAGE_BYTES_MAX


def digest_bytes(path: bytes, entries: list[bytes], count: bytes | None = None) -> bytes:
    head = bytes([1, len(path)]) + path + SALT
    return head + (count if count is not None else bytes([len(entries)])) + b"".join(entries)


def entry_bytes(rel: bytes, count: int = 1) -> bytes:
    return bytes([len(rel)]) + rel + bytes([count]) + FP


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x09", "unknown message tag"),
        (b"\x01" + bytes(MESSAGE_BYTES_MAX), "limit"),
        (b"\x01", "truncated"),
        (digest_bytes(b"", [])[:-1], "truncated"),
        (digest_bytes(b"", []) + b"\x00", "trailing"),
        (digest_bytes(b"", [], b"\x80\x00"), "non-minimal"),
        (digest_bytes(b"", [], b"\xff" * 11), "longer than"),
        (digest_bytes(b"", [], b"\xff" * 9 + b"\x7f"), "64 bits"),
        (digest_bytes(b"", [], b"\x81\x02"), "entries; the limit"),
        (digest_bytes(b"\x40", []), "digit 64"),
        (bytes([1, DEPTH + 1]), "digits"),
        (digest_bytes(bytes(DEPTH), [entry_bytes(b"\x01")]), "deeper"),
        (digest_bytes(b"", [entry_bytes(b"\x02"), entry_bytes(b"\x01")]), "sorted"),
        (digest_bytes(b"", [entry_bytes(b"\x01"), entry_bytes(b"\x01")]), "sorted"),
        (digest_bytes(b"", [entry_bytes(b"\x01"), entry_bytes(b"\x01\x05")]), "overlap"),
        (digest_bytes(b"", [entry_bytes(b""), entry_bytes(b"\x01")]), "overlap"),
        (digest_bytes(b"", [entry_bytes(b"\x01", 0)]), "count 0"),
        (b"\x02\x00\x02" + b"\x02" * 32 + b"\x01" * 32, "ascending"),
        (b"\x02\x00\x02" + b"\x01" * 64, "ascending"),
        (b"\x02\x00\x02" + b"\x01" * 40, "truncated"),
        (b"\x03\x00", "at least one"),
        (b"\x03\x81\x08" + bytes(32), "1025 ids"),
        (b"\x03\xff\xff\xff\xff\x0f", "ids; the limit"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(data: bytes, match: str) -> None:
    with pytest.raises(BadMessage, match=match):
        decode(data)
    assert issubclass(BadMessage, ValueError)


def test_constructors_refuse_what_decode_would() -> None:
    with pytest.raises(BadMessage, match="limit"):
        Missing(sorted_ids(22, IDS_MAX + 1))
    with pytest.raises(BadMessage, match="entries"):
        Digest((), SALT, tuple(Entry((i // 64, i % 64), 1, FP) for i in range(ENTRIES_MAX + 1)))
    with pytest.raises(BadMessage, match="fingerprint"):
        Entry((), 1, bytes(16))
    with pytest.raises(BadMessage, match="tuple"):
        IdList([1], ())  # type: ignore[arg-type]
    with pytest.raises(BadMessage, match="a message is bytes"):
        decode("text")  # type: ignore[arg-type]
