"""Properties of node.placement.core under arbitrary sequences (Hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from node.placement.core import Ask, Done, Fail, HostBook, Resources, SlotPlacement

amounts = st.integers(min_value=0, max_value=16)
resources = st.builds(Resources, amounts, st.integers(0, 64), st.integers(0, 64), st.integers(0, 2))
keys = st.sampled_from([f"k{i}" for i in range(8)])


class BookMachine(RuleBasedStateMachine):
    """A HostBook under any sequence of offers and releases, against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.total = Resources(16, 64, 64, 2)
        self.book = HostBook(self.total, slots_max=6)
        self.model: dict[str, Resources] = {}

    @rule(key=keys, need=resources)
    def offer(self, key: str, need: Resources) -> None:
        before = dict(self.model)
        answer = self.book.offer(key, need)
        if key in before and before[key] == need:
            assert answer.accepted  # idempotent
        if answer.accepted:
            self.model[key] = need
        assert self.model.keys() - before.keys() <= {key}
        # A refusal changes nothing; an acceptance changes at most this key.
        if not answer.accepted:
            assert self.model == before
        assert answer.free == self.book.free

    @rule(key=keys)
    def offer_twice(self, key: str) -> None:
        need = Resources(1, 1, 1)
        first = self.book.offer(key, need)
        committed = self.book.committed
        second = self.book.offer(key, need)
        assert self.book.committed == committed
        if first.accepted:
            self.model[key] = need
            assert second.accepted

    @rule(key=keys)
    def release(self, key: str) -> None:
        assert self.book.release(key) is (key in self.model)
        self.model.pop(key, None)

    @invariant()
    def never_over_commits(self) -> None:
        total = Resources()
        for need in self.model.values():
            total = total + need
        assert self.book.committed == total
        assert total.fits(self.total)
        assert sorted(self.book.keys()) == sorted(self.model)
        assert len(self.model) <= 6


TestHostBook = BookMachine.TestCase
TestHostBook.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


views = st.dictionaries(
    st.sampled_from([f"n{i}" for i in range(30)]), resources, min_size=0, max_size=30
)


@settings(max_examples=200, deadline=None)
@given(
    view=views,
    need=resources,
    seed=st.integers(0, 2**32),
    attempts_max=st.integers(1, 8),
    policy=st.sampled_from(["spread", "binpack"]),
    choices=st.integers(1, 4),
    script=st.lists(st.sampled_from(["accept", "refuse", "timeout", "stale"]), max_size=20),
)
def test_slot_placement_terminates_never_repeats_and_fails_clearly(
    view: dict[str, Resources],
    need: Resources,
    seed: int,
    attempts_max: int,
    policy: str,
    choices: int,
    script: list[str],
) -> None:
    rng = random.Random(seed)
    p = SlotPlacement(
        "k-0",
        need,
        attempts_max=attempts_max,
        policy=policy,
        choices=choices,
        answer_timeout_ms=100,
    )
    now = 0
    out: Ask | Done | Fail | None = p.start(view, now, rng)
    asked: list[str] = []
    steps = 0
    moves = iter(script)
    while isinstance(out, Ask):
        steps += 1
        assert steps <= attempts_max
        assert out.host not in asked
        # Only a node whose (view or reported) free fits is asked.
        assert out.host in view
        asked.append(out.host)
        move = next(moves, "refuse")
        now += 10
        if move == "stale":
            assert p.on_answer("nobody", out.attempt, True, need, view, now, rng) is None
            move = "refuse"
        if move == "accept":
            out = p.on_answer(out.host, out.attempt, True, need, view, now, rng)
        elif move == "refuse":
            reported = Resources(rng.randrange(4), rng.randrange(8), rng.randrange(8))
            out = p.on_answer(out.host, out.attempt, False, reported, view, now, rng)
        else:
            now += 100
            out = p.on_timer(now, view, rng)
    assert out is not None
    assert list(p.tried) == asked
    if isinstance(out, Done):
        assert out.host == asked[-1]
    else:
        assert isinstance(out, Fail)
        assert out.tried == tuple(asked)
        if out.largest_free is None:
            assert out.message == "no node offers VMs"
            assert not view
        else:
            _node, free = out.largest_free
            assert out.message.startswith(f"no node has room for {need.describe()}")
            assert f"the largest free slot is {free.describe()} on node" in out.message
        if not asked:
            # Failing without an ask means nothing in the view fit.
            assert not any(need.fits(f) for f in view.values())


@settings(max_examples=150, deadline=None)
@given(
    totals=st.lists(resources, min_size=1, max_size=5),
    needs=st.lists(resources, min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_racing_placements_never_over_commit_and_each_lands_once(
    totals: list[Resources], needs: list[Resources], seed: int, data: st.DataObject
) -> None:
    # Every placer starts from the same view (every host empty), the messages are delivered in
    # any order Hypothesis picks, and some asks time out. The driver does what a node does:
    # it releases an acceptance its placement no longer wants.
    rng = random.Random(seed)
    books = {f"h{i}": HostBook(t) for i, t in enumerate(totals)}
    view = {h: b.total for h, b in books.items()}
    placements = [SlotPlacement(f"k{i}", need, attempts_max=3) for i, need in enumerate(needs)]
    inflight: list[tuple[str, int, str, int, bool, Resources | None]] = []
    results: dict[int, Ask | Done | Fail | None] = {}

    def act(i: int, out: Ask | Done | Fail | None) -> None:
        if isinstance(out, Ask):
            inflight.append(("ask", i, out.host, out.attempt, False, None))
        elif out is not None:
            results[i] = out

    for i, p in enumerate(placements):
        act(i, p.start(view, 0, rng))
    now = 0
    steps = 0
    while inflight:
        steps += 1
        assert steps < 1000
        now += 1
        kind, i, host, attempt, accepted, free = inflight.pop(
            data.draw(st.integers(0, len(inflight) - 1))
        )
        p = placements[i]
        if kind == "ask":
            answer = books[host].offer(p.key, p.need)
            if data.draw(st.booleans()) and p.next_wakeup_ms is not None:
                # The answer is slow: the placer times out first and moves on.
                act(i, p.on_timer(p.next_wakeup_ms, view, rng))
            inflight.append(("answer", i, host, attempt, answer.accepted, answer.free))
        elif kind == "answer":
            assert free is not None
            out = p.on_answer(host, attempt, accepted, free, view, now, rng)
            done = results.get(i)
            wanted = isinstance(done, Done) and (done.host, done.attempt) == (host, attempt)
            if out is None and accepted and not wanted:
                books[host].release(p.key)
            act(i, out)
        for book in books.values():
            assert book.committed.fits(book.total)
    for i, p in enumerate(placements):
        holders = [h for h, b in books.items() if b.holds(p.key)]
        out = results.get(i)
        if isinstance(out, Done):
            assert holders == [out.host]
        else:
            assert isinstance(out, Fail)
            assert holders == []
