import pytest

from node.ledger.hlc import HLC, ClockDriftError


def test_now_follows_physical_time_and_ticks_within_a_millisecond() -> None:
    clock = HLC()
    assert clock.now(100) == (100, 0)
    assert clock.now(100) == (100, 1)
    assert clock.now(99) == (100, 2)  # physical time went backwards: the clock does not
    assert clock.now(150) == (150, 0)


def test_observe_moves_past_the_remote_timestamp() -> None:
    clock = HLC()
    clock.now(100)
    assert clock.observe(100, (120, 5)) == (120, 6)
    assert clock.now(110) == (120, 7)
    assert clock.observe(200, (120, 9)) == (200, 0)


def test_observe_equal_walls_takes_the_larger_logical() -> None:
    clock = HLC(120, 3)
    assert clock.observe(50, (120, 8)) == (120, 9)
    assert clock.observe(50, (120, 1)) == (120, 10)


def test_every_event_after_a_receive_sorts_after_it() -> None:
    a, b = HLC(), HLC()
    sent = a.now(1_000)
    received = b.observe(10, sent)  # b's physical clock is far behind
    assert received > sent
    assert b.now(11) > sent


def test_a_clock_too_far_ahead_is_refused_and_changes_nothing() -> None:
    clock = HLC(drift_ms_max=1_000)
    clock.now(5_000)
    with pytest.raises(ClockDriftError, match="ahead of ours"):
        clock.observe(5_000, (6_001, 0))
    assert (clock.wall_ms, clock.logical) == (5_000, 0)
    assert clock.observe(5_000, (6_000, 0)) == (6_000, 1)


def test_logical_overflow_moves_wall_time() -> None:
    clock = HLC(10, 2**32 - 1)
    assert clock.now(5) == (11, 0)
