"""node.placement.core: resources, the host's book, ranking and one slot's placement."""

from __future__ import annotations

import random

import pytest

from node.placement.core import (
    Answer,
    Ask,
    Done,
    Fail,
    HostBook,
    Resources,
    SlotPlacement,
    largest_free,
    rank,
)

SMALL = Resources(2, 4096, 10)


def res(vcpus: int, memory_mb: int = 0, disk_gb: int = 0, gpus: int = 0) -> Resources:
    return Resources(vcpus, memory_mb, disk_gb, gpus)


# -- Resources -----------------------------------------------------------------------------


def test_fits_needs_every_dimension() -> None:
    free = res(4, 8192, 40)
    assert SMALL.fits(free)
    assert not res(5, 1, 1).fits(free)
    assert not res(1, 8193, 1).fits(free)
    assert not res(1, 1, 41).fits(free)
    assert not res(1, 1, 1, 1).fits(free)


def test_arithmetic_is_per_dimension_and_sub_may_go_negative() -> None:
    assert res(1, 2, 3, 4) + res(10, 20, 30, 40) == res(11, 22, 33, 44)
    assert res(1, 2, 3, 0) - res(2, 1, 3, 1) == res(-1, 1, 0, -1)


def test_json_round_trip_and_defaults() -> None:
    r = res(2, 4096, 10, 1)
    assert r.to_json() == {"vcpus": 2, "memory_mb": 4096, "disk_gb": 10, "gpus": 1}
    assert Resources.from_json(r.to_json()) == r
    assert Resources.from_json(None) == Resources()
    assert Resources.from_json({"vcpus": 3}) == res(3)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"vcpus": "2"}, "resources.vcpus"),
        ({"vcpus": 1.5}, "resources.vcpus"),
        ({"memory_mb": -1}, "resources.memory_mb"),
        ({"gpus": True}, "resources.gpus"),
        ({"cpus": 2}, "unknown key(s) cpus"),
        ([1, 2], "must be an object"),
    ],
)
def test_from_json_rejects_bad_input_naming_the_field(data: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Resources.from_json(data)  # type: ignore[arg-type]


def test_describe() -> None:
    assert SMALL.describe() == "2 vCPU, 4096 MB, 10 GB"
    assert res(1, 2, 3, 1).describe() == "1 vCPU, 2 MB, 3 GB, 1 GPU"
    assert res(1, 2, 3, 2).describe() == "1 vCPU, 2 MB, 3 GB, 2 GPUs"


# -- HostBook ------------------------------------------------------------------------------


def test_offer_commits_and_release_frees() -> None:
    book = HostBook(res(4, 8192, 40))
    answer = book.offer("a-0", SMALL)
    assert answer == Answer(True, res(2, 4096, 30))
    assert book.committed == SMALL
    assert book.holds("a-0")
    assert book.keys() == ["a-0"]
    assert book.release("a-0") is True
    assert book.release("a-0") is False
    assert book.free == res(4, 8192, 40)
    assert book.keys() == []


def test_two_offers_for_the_last_room_never_both_win() -> None:
    book = HostBook(res(3, 8192, 40))
    first = book.offer("a-0", SMALL)
    second = book.offer("b-0", SMALL)
    assert first.accepted
    assert not second.accepted
    assert second.reason == (
        "needs 2 vCPU, 4096 MB, 10 GB; free 1 vCPU, 4096 MB, 30 GB (short of vCPU)"
    )
    assert second.free == res(1, 4096, 30)
    assert book.committed == SMALL


def test_offer_is_idempotent_by_key() -> None:
    book = HostBook(res(4, 8192, 40))
    assert book.offer("a-0", SMALL).accepted
    again = book.offer("a-0", SMALL)
    assert again.accepted
    assert book.committed == SMALL
    # The same key for a different need is a caller's bug: refused, nothing changes.
    other = book.offer("a-0", res(1, 1, 1))
    assert not other.accepted
    assert "already held for 2 vCPU" in other.reason
    assert book.committed == SMALL


def test_offer_bounds_slots_and_rejects_bad_input_unchanged() -> None:
    book = HostBook(res(100, 100_000, 1000), slots_max=2)
    assert book.offer("a", res(1)).accepted
    assert book.offer("b", res(1)).accepted
    refused = book.offer("c", res(1))
    assert not refused.accepted
    assert "2 slots" in refused.reason
    assert not book.offer("", res(1)).accepted
    assert not book.offer("x" * 200, res(1)).accepted
    assert not book.offer("d", res(-1)).accepted
    assert book.keys() == ["a", "b"]
    with pytest.raises(ValueError, match="slots_max"):
        HostBook(res(1), slots_max=0)
    with pytest.raises(ValueError, match="total"):
        HostBook(res(-1))


# -- rank and largest_free -----------------------------------------------------------------


def test_rank_lists_only_the_nodes_that_fit() -> None:
    view = {
        "a": res(1, 1024, 5),
        "b": res(4, 8192, 40),
        "c": res(8, 16384, 80),
        "d": res(2, 4096, 10),
    }
    ranked = rank(view, SMALL, rng=random.Random(1))
    assert sorted(ranked) == ["b", "c", "d"]
    assert rank(view, SMALL, rng=random.Random(1), exclude=["b", "c", "d"]) == []
    assert rank(view, res(64), rng=random.Random(1)) == []


def test_rank_follows_the_policy_after_the_pick() -> None:
    view = {f"n{i}": res(i, 4096 * i, 40 * i) for i in range(2, 10)}
    spread = rank(view, SMALL, rng=random.Random(3), policy="spread")
    binpack = rank(view, SMALL, rng=random.Random(3), policy="binpack")
    assert spread[1:] == sorted(spread[1:], key=lambda n: -view[n].vcpus)
    assert binpack[1:] == sorted(binpack[1:], key=lambda n: view[n].vcpus)


def test_rank_with_all_choices_picks_the_policy_best() -> None:
    view = {f"n{i}": res(i, 4096 * i, 40 * i) for i in range(2, 8)}
    assert rank(view, SMALL, rng=random.Random(5), policy="spread", choices=16)[0] == "n7"
    assert rank(view, SMALL, rng=random.Random(5), policy="binpack", choices=16)[0] == "n2"


def test_power_of_two_pick_is_the_better_of_two_random_nodes() -> None:
    # Over many draws the pick is never the worst node (it loses to any second choice) and
    # not always the best one (both draws may miss it).
    view = {f"n{i}": res(i, 4096 * i, 40 * i) for i in range(2, 12)}
    rng = random.Random(7)
    firsts = [rank(view, SMALL, rng=rng, policy="spread")[0] for _ in range(400)]
    assert "n2" not in firsts
    assert len(set(firsts)) > 3


def test_rank_avoids_gpu_hosts_for_requests_without_gpus() -> None:
    view = {"gpu": res(16, 65536, 400, 2), "plain": res(4, 8192, 40)}
    for seed in range(20):
        assert rank(view, SMALL, rng=random.Random(seed), choices=2)[0] == "plain"
    assert rank(view, res(1, 1, 1, 1), rng=random.Random(1)) == ["gpu"]


def test_rank_rejects_an_unknown_policy_or_choice_count() -> None:
    with pytest.raises(ValueError, match="policy 'pack'"):
        rank({}, SMALL, rng=random.Random(1), policy="pack")
    with pytest.raises(ValueError, match="choices = 0"):
        rank({}, SMALL, rng=random.Random(1), choices=0)


def test_rank_over_a_large_view_finds_the_one_node_that_fits() -> None:
    view = {f"n{i:04d}": res(1, 1024, 5) for i in range(1000)}
    view["n0777"] = res(8, 16384, 80)
    assert rank(view, SMALL, rng=random.Random(2)) == ["n0777"]


def test_largest_free() -> None:
    view = {"b": res(4, 100), "a": res(4, 100), "c": res(2, 9999)}
    assert largest_free(view) == ("a", res(4, 100))
    assert largest_free(view, exclude=["a", "b"]) == ("c", res(2, 9999))
    assert largest_free({}) is None


# -- SlotPlacement -------------------------------------------------------------------------


def test_a_refusal_moves_to_the_next_candidate_using_the_reported_free() -> None:
    view = {"a": res(8, 16384, 80), "b": res(4, 8192, 40)}
    p = SlotPlacement("k-0", SMALL, choices=16)
    rng = random.Random(1)
    first = p.start(view, 0, rng)
    assert first == Ask("a", 1)
    assert p.next_wakeup_ms == 5_000
    # "a" is really full: its reported free replaces the view's for the rest of the placement.
    second = p.on_answer("a", 1, False, res(0, 0, 0), view, 10, rng)
    assert second == Ask("b", 2)
    assert (p.refusals, p.retries, p.tried) == (1, 1, ("a", "b"))
    assert p.on_answer("b", 2, True, res(2, 4096, 30), view, 20, rng) == Done("b", 2)
    assert p.next_wakeup_ms is None


def test_stale_and_duplicate_answers_are_ignored() -> None:
    view = {"a": res(8, 16384, 80), "b": res(4, 8192, 40)}
    p = SlotPlacement("k-0", SMALL, choices=16)
    rng = random.Random(1)
    assert p.start(view, 0, rng) == Ask("a", 1)
    assert p.on_answer("b", 1, True, res(1), view, 5, rng) is None  # not asked
    assert p.on_answer("a", 7, True, res(1), view, 5, rng) is None  # wrong attempt
    assert p.on_answer("a", 1, True, res(1), view, 5, rng) == Done("a", 1)
    assert p.on_answer("a", 1, True, res(1), view, 6, rng) is None  # duplicate
    with pytest.raises(RuntimeError, match="already started"):
        p.start(view, 7, rng)


def test_a_timeout_asks_the_next_host_and_a_late_answer_is_ignored() -> None:
    view = {"a": res(8, 16384, 80), "b": res(4, 8192, 40)}
    p = SlotPlacement("k-0", SMALL, choices=16, answer_timeout_ms=100)
    rng = random.Random(1)
    assert p.start(view, 0, rng) == Ask("a", 1)
    assert p.on_timer(99, view, rng) is None
    assert p.on_timer(100, view, rng) == Ask("b", 2)
    assert p.timeouts == 1
    assert p.on_answer("a", 1, True, res(1), view, 120, rng) is None


def test_fits_nowhere_fails_naming_the_largest_free_slot() -> None:
    view = {"0xabcdef0123456789": res(1, 2048, 30), "b": res(1, 1024, 10)}
    p = SlotPlacement("k-0", SMALL)
    out = p.start(view, 0, random.Random(1))
    assert isinstance(out, Fail)
    assert out.message == (
        "no node has room for 2 vCPU, 4096 MB, 10 GB; the largest free slot is "
        "1 vCPU, 2048 MB, 30 GB on node 0xabcdef01…"
    )
    assert out.largest_free == ("0xabcdef0123456789", res(1, 2048, 30))
    assert out.tried == ()
    assert SlotPlacement("k-1", SMALL).start({}, 0, random.Random(1)) == Fail(
        "no node offers VMs", None, ()
    )


def test_gives_up_after_attempts_max_and_never_asks_a_host_twice() -> None:
    view = {f"n{i}": res(8, 16384, 80) for i in range(10)}
    p = SlotPlacement("k-0", SMALL, attempts_max=3)
    rng = random.Random(4)
    out = p.start(view, 0, rng)
    asked = []
    while isinstance(out, Ask):
        asked.append(out.host)
        out = p.on_answer(out.host, out.attempt, False, res(1, 1, 1), view, 1, rng)  # type: ignore[assignment]
    assert isinstance(out, Fail)
    assert len(asked) == 3
    assert len(set(asked)) == 3
    assert "after 3 asks; the largest free slot is 8 vCPU" in out.message
    assert out.tried == tuple(asked)


def test_refusals_exhaust_the_fitting_nodes_then_fail_with_their_reported_free() -> None:
    view = {"a": res(8, 16384, 80), "b": res(4, 8192, 40)}
    p = SlotPlacement("k-0", SMALL)
    rng = random.Random(2)
    first = p.start(view, 0, rng)
    assert isinstance(first, Ask)
    second = p.on_answer(first.host, 1, False, res(1, 1024, 5), view, 1, rng)
    assert isinstance(second, Ask)
    out = p.on_answer(second.host, 2, False, res(1, 2048, 5), view, 2, rng)
    assert isinstance(out, Fail)
    assert out.message.endswith(
        "the largest free slot is 1 vCPU, 2048 MB, 5 GB on node " + second.host
    )


def test_excluded_and_numbering_for_a_reschedule() -> None:
    view = {"dead": res(8, 16384, 80), "b": res(4, 8192, 40)}
    p = SlotPlacement("k-0", SMALL, attempt_first=4, exclude=["dead"])
    assert p.attempt == 3
    assert p.start(view, 0, random.Random(1)) == Ask("b", 4)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"attempts_max": 0}, "attempts_max"),
        ({"attempts_max": 65}, "attempts_max"),
        ({"answer_timeout_ms": 0}, "answer_timeout_ms"),
        ({"attempt_first": 0}, "attempt_first"),
        ({"policy": "random"}, "policy"),
        ({"choices": 17}, "choices"),
    ],
)
def test_slot_placement_rejects_bad_settings(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        SlotPlacement("k-0", SMALL, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slot key"):
        SlotPlacement("", SMALL)


def test_two_placements_racing_for_the_last_room_never_both_win() -> None:
    # Both placers see the same stale view (two free vCPUs on "a", and "b" too small); the
    # host answers their asks one at a time, so only the first lands; the second learns the
    # true free from the refusal and fails naming it.
    view = {"a": res(2, 4096, 10), "b": res(1, 1024, 5)}
    book = HostBook(res(2, 4096, 10))
    rng = random.Random(1)
    first, second = SlotPlacement("x-0", SMALL), SlotPlacement("y-0", SMALL)
    ask_1, ask_2 = first.start(view, 0, rng), second.start(view, 0, rng)
    assert ask_1 == Ask("a", 1)
    assert ask_2 == Ask("a", 1)
    answer_1 = book.offer("x-0", SMALL)
    answer_2 = book.offer("y-0", SMALL)
    out_1 = first.on_answer("a", 1, answer_1.accepted, answer_1.free, view, 5, rng)
    out_2 = second.on_answer("a", 1, answer_2.accepted, answer_2.free, view, 5, rng)
    assert out_1 == Done("a", 1)
    assert isinstance(out_2, Fail)
    assert out_2.tried == ("a",)
    assert out_2.largest_free == ("b", res(1, 1024, 5))
    assert book.keys() == ["x-0"]
