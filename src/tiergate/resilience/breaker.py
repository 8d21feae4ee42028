"""A per-tier circuit breaker: stop calling a tier that keeps failing, probe it later.

States: ``closed`` (calls flow; outcomes recorded in a rolling window) → ``open`` when,
with at least ``min_calls`` outcomes in the window, the failure share reaches
``failure_rate`` → after ``cooldown_s``, ``half_open``: up to ``probes`` calls are let
through; if they all succeed the breaker closes, one failure re-opens it (and the
cooldown doubles up to ``max_cooldown_s``, so a flapping tier is probed less).

The window is bucketed, as in Hystrix, resilience4j and Envoy: time is cut into buckets
of ``window_s / buckets`` seconds (bucket index ``floor(t / width)``), each holding a count
of calls and failures, and the window at time ``t`` is the bucket holding ``t`` plus the
``buckets - 1`` before it. So an outcome counts for between ``window_s - width`` and
``window_s`` after it happened, depending on where in its bucket it fell. Running totals
make ``record`` O(1) amortised whatever the request rate (O(buckets) at worst, after an
idle spell), and the storage is at most ``buckets`` counters.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["BreakerPolicy", "CircuitBreaker", "State"]

State = Literal["closed", "open", "half_open"]
STATE_VALUE: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}

_TRANSITIONS_KEPT = 256
_NO_BUCKET = -(1 << 63)  # before any bucket index a real clock yields


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers.

    >>> BreakerPolicy(window_s=10.0, buckets=10).bucket_s
    1.0
    """

    failure_rate: float = 0.5
    min_calls: int = 10
    window_s: float = 10.0
    cooldown_s: float = 2.0
    max_cooldown_s: float = 30.0
    probes: int = 3
    buckets: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_calls < 1 or self.probes < 1 or self.buckets < 1:
            raise ValueError("min_calls, probes and buckets must be >= 1")
        if self.window_s <= 0 or self.cooldown_s <= 0 or self.max_cooldown_s < self.cooldown_s:
            raise ValueError("window_s, cooldown_s > 0 and max_cooldown_s >= cooldown_s")

    @property
    def bucket_s(self) -> float:
        """Width of one bucket of the rolling window, in seconds."""
        return self.window_s / self.buckets


class CircuitBreaker:
    """Thread-unsafe by design: used from the event loop only.

    ``transitions`` holds the last 256 ``(time, new_state)`` changes.

    >>> b = CircuitBreaker("accurate", BreakerPolicy(min_calls=2), clock=lambda: 0.0)
    >>> b.record(False); b.record(False); b.state
    'open'
    """

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy = BreakerPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._on_change = on_change
        self._width = policy.bucket_s
        # The window: finished buckets (index, calls, failures), oldest first, with their
        # totals; the current bucket lives in plain ints, the only ones most calls touch.
        self._past: deque[tuple[int, int, int]] = deque()
        self._past_calls = 0
        self._past_failures = 0
        self._bucket = _NO_BUCKET
        self._calls = 0
        self._failures = 0
        self._state: State = "closed"
        self._opened_at = 0.0
        self._cooldown = policy.cooldown_s
        self._probes_left = 0
        self._probe_successes = 0
        self.transitions: deque[tuple[float, State]] = deque(maxlen=_TRANSITIONS_KEPT)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r}, {self.policy!r})"

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self._cooldown:
            self._set("half_open")
            self._probes_left = self.policy.probes
            self._probe_successes = 0
        return self._state

    def allow(self) -> bool:
        """May a call go to the tier now? (In half-open, consumes a probe slot.)"""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._probes_left > 0:
            self._probes_left -= 1
            return True
        return False

    def on_change(self, callback: Callable[[str, State], None]) -> None:
        """Call ``callback(name, new_state)`` on every transition."""
        self._on_change = callback

    def trip(self) -> None:
        """Open the breaker now (an operator draining a tier, or a test)."""
        self._open(self._clock())

    def cancel(self) -> None:
        """A call ``allow()`` let through ended without a verdict: give its probe back."""
        if self._state == "half_open":
            self._probes_left = min(self._probes_left + 1, self.policy.probes)

    def record(self, success: bool) -> None:
        """Record the outcome of a call that ``allow()`` let through."""
        now = self._clock()
        if self._state != "closed":  # (`state` only ever moves open → half_open itself)
            self._record_probe(now, success)
            return
        bucket = int(now // self._width)
        if bucket > self._bucket:  # (a clock that steps back counts into the current one)
            self._roll(bucket)
        self._calls += 1
        if not success:
            self._failures += 1
        n = self._past_calls + self._calls
        if n >= self.policy.min_calls:
            failures = self._past_failures + self._failures
            if failures / n >= self.policy.failure_rate:
                self._open(now)

    def _record_probe(self, now: float, success: bool) -> None:
        """An outcome outside ``closed``: a probe's verdict, or a straggler's."""
        state = self.state
        if state == "open":
            return  # a straggler from before the breaker opened
        if not success:
            self._cooldown = min(self._cooldown * 2, self.policy.max_cooldown_s)
            self._open(now)
            return
        self._probe_successes += 1
        if self._probe_successes >= self.policy.probes:
            self._cooldown = self.policy.cooldown_s
            self._clear()
            self._set("closed")

    def _roll(self, bucket: int) -> None:
        """Close the current bucket, start ``bucket`` and drop those now out of the window."""
        if self._calls:
            self._past.append((self._bucket, self._calls, self._failures))
            self._past_calls += self._calls
            self._past_failures += self._failures
        self._bucket = bucket
        self._calls = self._failures = 0
        oldest_out = bucket - self.policy.buckets
        past = self._past
        while past and past[0][0] <= oldest_out:  # at most `buckets` iterations
            _, calls, failures = past.popleft()
            self._past_calls -= calls
            self._past_failures -= failures

    def _clear(self) -> None:
        self._past.clear()
        self._past_calls = self._past_failures = 0
        self._calls = self._failures = 0

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._clear()
        self._set("open")

    def _set(self, state: State) -> None:
        if state != self._state:
            self._state = state
            self.transitions.append((self._clock(), state))
            if self._on_change:
                self._on_change(self.name, state)
