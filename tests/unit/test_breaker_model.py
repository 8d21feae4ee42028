"""The circuit breaker against a naive reference model, and its bounded storage.

The model keeps every outcome of the window as ``(bucket_index, ok)`` and counts them
afresh on each ``record``: O(n), obviously right. Hypothesis drives both with the same
random operations on one manual clock and checks they never disagree.
"""

from __future__ import annotations

from typing import Literal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tiergate.resilience import BreakerPolicy, CircuitBreaker
from tiergate.testing import ManualClock

State = Literal["closed", "open", "half_open"]


class ReferenceBreaker:
    """The spec, written plainly: the window is the current bucket and the ``buckets - 1`` before."""

    def __init__(self, policy: BreakerPolicy, clock: ManualClock) -> None:
        self.policy = policy
        self.clock = clock
        self.outcomes: list[tuple[int, bool]] = []
        self.state_: State = "closed"
        self.opened_at = 0.0
        self.cooldown = policy.cooldown_s
        self.probes_left = 0
        self.probe_successes = 0
        self.transitions: list[tuple[float, State]] = []

    def bucket(self, t: float) -> int:
        return int(t // (self.policy.window_s / self.policy.buckets))

    def state(self) -> State:
        if self.state_ == "open" and self.clock() - self.opened_at >= self.cooldown:
            self.set("half_open")
            self.probes_left = self.policy.probes
            self.probe_successes = 0
        return self.state_

    def allow(self) -> bool:
        state = self.state()
        if state == "closed":
            return True
        if state == "half_open" and self.probes_left > 0:
            self.probes_left -= 1
            return True
        return False

    def cancel(self) -> None:
        if self.state_ == "half_open":
            self.probes_left = min(self.probes_left + 1, self.policy.probes)

    def trip(self) -> None:
        self.open(self.clock())

    def record(self, ok: bool) -> None:
        now = self.clock()
        state = self.state()
        if state == "half_open":
            if not ok:
                self.cooldown = min(self.cooldown * 2, self.policy.max_cooldown_s)
                self.open(now)
            else:
                self.probe_successes += 1
                if self.probe_successes >= self.policy.probes:
                    self.cooldown = self.policy.cooldown_s
                    self.outcomes = []
                    self.set("closed")
            return
        if state == "open":
            return
        current = self.bucket(now)
        self.outcomes.append((current, ok))
        window = [ok for b, ok in self.outcomes if current - b < self.policy.buckets]
        n, failures = len(window), window.count(False)
        if n >= self.policy.min_calls and failures / n >= self.policy.failure_rate:
            self.open(now)

    def open(self, now: float) -> None:
        self.opened_at = now
        self.outcomes = []
        self.set("open")

    def set(self, state: State) -> None:
        if state != self.state_:
            self.state_ = state
            self.transitions.append((self.clock(), state))


policies = st.builds(
    BreakerPolicy,
    failure_rate=st.sampled_from([0.1, 0.25, 0.5, 0.6, 1.0]),
    min_calls=st.integers(1, 8),
    window_s=st.sampled_from([0.3, 1.0, 2.5, 10.0]),
    cooldown_s=st.sampled_from([0.1, 0.5, 1.0, 3.0]),
    max_cooldown_s=st.just(8.0),
    probes=st.integers(1, 3),
    buckets=st.integers(1, 12),
)

steps = st.one_of(
    st.just(0.0),
    st.floats(0, 0.2),  # within a bucket, mostly
    st.floats(0, 12),  # across buckets and cooldowns
    st.floats(100, 1e6),  # a long idle spell
)


class BreakerVersusModel(RuleBasedStateMachine):
    clock: ManualClock
    breaker: CircuitBreaker
    model: ReferenceBreaker

    @initialize(policy=policies, start=st.one_of(st.just(0.0), st.floats(0, 1e6)))
    def setup(self, policy: BreakerPolicy, start: float) -> None:
        self.clock = ManualClock(start)
        self.breaker = CircuitBreaker("t", policy, clock=self.clock)
        self.model = ReferenceBreaker(policy, self.clock)

    @rule(dt=steps)
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule()
    def allow(self) -> None:
        assert self.breaker.allow() == self.model.allow()

    @rule(ok=st.booleans())
    def record(self, ok: bool) -> None:
        self.breaker.record(ok)
        self.model.record(ok)

    @rule(ok=st.booleans())
    def call(self, ok: bool) -> None:  # the way the cascade uses it
        allowed = self.breaker.allow()
        assert allowed == self.model.allow()
        if allowed:
            self.breaker.record(ok)
            self.model.record(ok)

    @rule(oks=st.lists(st.booleans(), min_size=1, max_size=20))
    def burst(self, oks: list[bool]) -> None:
        for ok in oks:
            self.breaker.record(ok)
            self.model.record(ok)

    @rule()
    def cancel(self) -> None:
        self.breaker.cancel()
        self.model.cancel()

    @rule()
    def trip(self) -> None:
        self.breaker.trip()
        self.model.trip()

    @rule()
    def read_state(self) -> None:
        assert self.breaker.state == self.model.state()

    @invariant()
    def same_history(self) -> None:
        # `transitions` is a plain attribute: reading it changes nothing.
        assert list(self.breaker.transitions) == self.model.transitions[-256:]
        assert len(self.breaker._past) < self.breaker.policy.buckets  # + the current one


TestBreakerVersusModel = BreakerVersusModel.TestCase
TestBreakerVersusModel.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)


def _fill(n: int, policy: BreakerPolicy) -> CircuitBreaker:
    """``n`` outcomes (1 failure in 4) spread evenly over one window."""
    clock = ManualClock(1000.0)
    b = CircuitBreaker("t", policy, clock=clock)
    step = policy.window_s / n
    for i in range(n):
        b.record(i % 4 != 0)
        clock.advance(step)
    return b


def test_storage_does_not_grow_with_the_outcomes_in_the_window() -> None:
    policy = BreakerPolicy(failure_rate=0.5, min_calls=10, window_s=10.0, buckets=10)
    for n in (100, 10_000, 100_000):
        b = _fill(n, policy)
        assert b.state == "closed"
        assert len(b._past) + 1 <= policy.buckets  # finished buckets + the current one
        assert b._past_calls + b._calls == n  # all of them still counted, in ≤ 10 counters
        assert b._past_failures + b._failures == n // 4


def test_storage_stays_bounded_over_a_long_run() -> None:
    policy = BreakerPolicy(failure_rate=0.5, min_calls=10, window_s=1.0, buckets=5)
    clock = ManualClock()
    b = CircuitBreaker("t", policy, clock=clock)
    for i in range(50_000):  # 50 s of 1000 calls/s, then a long idle spell
        b.record(i % 3 != 0)
        clock.advance(0.001)
        assert len(b._past) < policy.buckets
    clock.advance(1e6)
    b.record(True)
    assert len(b._past) == 0 and b._past_calls == 0 and b._calls == 1
