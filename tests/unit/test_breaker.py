"""Circuit breaker state machine, with an injected clock; property-tested."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiergate.resilience import BreakerPolicy, CircuitBreaker
from tiergate.testing import ManualClock

POLICY = BreakerPolicy(failure_rate=0.5, min_calls=4, window_s=10, cooldown_s=1, probes=2)


def test_opens_on_failure_rate_and_not_before_min_calls() -> None:
    clock = ManualClock()
    b = CircuitBreaker("t", POLICY, clock=clock)
    for _ in range(3):
        b.record(False)
    assert b.state == "closed"  # only 3 calls seen
    b.record(True)
    assert b.state == "open"  # 3 of 4 failed
    assert not b.allow()


def test_old_outcomes_leave_the_window() -> None:
    clock = ManualClock()
    b = CircuitBreaker("t", POLICY, clock=clock)
    b.record(False)
    b.record(False)
    clock.advance(11)
    b.record(True)
    b.record(True)
    b.record(False)
    assert b.state == "closed"  # window holds 1 failure of 3


def test_half_open_limits_probes_and_closes_after_successes() -> None:
    clock = ManualClock()
    b = CircuitBreaker("t", POLICY, clock=clock)
    for _ in range(4):
        b.record(False)
    clock.advance(1)
    assert b.state == "half_open"
    assert b.allow() and b.allow() and not b.allow()  # two probe slots
    b.record(True)
    b.record(True)
    assert b.state == "closed"


def test_failed_probe_reopens_with_doubled_cooldown() -> None:
    clock = ManualClock()
    b = CircuitBreaker("t", POLICY, clock=clock)
    for _ in range(4):
        b.record(False)
    clock.advance(1)
    assert b.allow()
    b.record(False)
    assert b.state == "open"
    clock.advance(1)
    assert b.state == "open"  # cooldown is now 2 s
    clock.advance(1)
    assert b.state == "half_open"


def test_cancelled_probe_gives_its_slot_back() -> None:
    clock = ManualClock()
    b = CircuitBreaker("t", POLICY, clock=clock)
    for _ in range(4):
        b.record(False)
    clock.advance(1)
    assert b.allow() and b.allow() and not b.allow()
    b.cancel()
    assert b.allow()


def test_cancel_never_adds_probe_slots() -> None:
    clock = ManualClock()
    b = CircuitBreaker("t", POLICY, clock=clock)
    b.trip()
    clock.advance(1)
    assert b.state == "half_open"
    b.cancel()  # nothing was let through: no slot to give back
    assert b.allow() and b.allow() and not b.allow()


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(failure_rate=0)
    with pytest.raises(ValueError):
        BreakerPolicy(cooldown_s=5, max_cooldown_s=1)
    with pytest.raises(ValueError):
        BreakerPolicy(buckets=0)


def test_window_is_bucket_granular() -> None:
    # 10 buckets of 1 s: an outcome at t=0.5 (bucket 0) counts while the clock is in
    # buckets 0..9, i.e. until t=10.0 — 9.5 s after it happened; one at t=0.0 counts 10 s.
    policy = BreakerPolicy(failure_rate=0.5, min_calls=3, window_s=10, buckets=10)
    clock = ManualClock(0.5)
    b = CircuitBreaker("t", policy, clock=clock)
    b.record(False)
    b.record(False)
    clock.now = 9.99
    b.record(True)
    assert b.state == "open"  # 2 of 3 failed: both failures still in the window
    clock.now = 20.5
    b = CircuitBreaker("t", policy, clock=clock)
    b.record(False)
    b.record(False)
    clock.now = 30.0  # bucket 30: bucket 20 has just left the window
    b.record(True)
    b.record(True)
    b.record(False)
    assert b.state == "closed"  # 1 of 3


def test_transitions_are_bounded() -> None:
    clock = ManualClock()
    b = CircuitBreaker("t", POLICY, clock=clock)
    for _ in range(1000):
        b.trip()
        clock.advance(1)
        assert b.state == "half_open"
    assert len(b.transitions) == 256
    assert b.transitions[-1] == (1000.0, "half_open")


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=200))
def test_state_machine_invariants(events: list[tuple[bool, float]]) -> None:
    clock = ManualClock()
    b = CircuitBreaker("t", POLICY, clock=clock)
    for success, dt in events:
        clock.advance(dt)
        before = b.state
        allowed = b.allow()
        if before == "open":
            assert not allowed
        if allowed:
            b.record(success)
        assert b.state in {"closed", "open", "half_open"}
        # Only these transitions exist.
    for (_, a), (_, c) in pairwise(b.transitions):
        assert (a, c) in {("open", "half_open"), ("half_open", "open"), ("half_open", "closed"),
                          ("closed", "open")}  # fmt: skip
