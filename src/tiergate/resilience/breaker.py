"""A per-tier circuit breaker: stop calling a tier that keeps failing, probe it later.

States: ``closed`` (calls flow; outcomes recorded in a sliding window) → ``open`` when,
with at least ``min_calls`` outcomes in the last ``window_s``, the failure share
reaches ``failure_rate`` → after ``cooldown_s``, ``half_open``: up to ``probes`` calls
are let through; if they all succeed the breaker closes, one failure re-opens it
(and the cooldown doubles up to ``max_cooldown_s``, so a flapping tier is probed less).
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


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers."""

    failure_rate: float = 0.5
    min_calls: int = 10
    window_s: float = 10.0
    cooldown_s: float = 2.0
    max_cooldown_s: float = 30.0
    probes: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_calls < 1 or self.probes < 1:
            raise ValueError("min_calls and probes must be >= 1")
        if self.window_s <= 0 or self.cooldown_s <= 0 or self.max_cooldown_s < self.cooldown_s:
            raise ValueError("window_s, cooldown_s > 0 and max_cooldown_s >= cooldown_s")


class CircuitBreaker:
    """Thread-unsafe by design: used from the event loop only.

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
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._state: State = "closed"
        self._opened_at = 0.0
        self._cooldown = policy.cooldown_s
        self._probes_left = 0
        self._probe_successes = 0
        self.transitions: list[tuple[float, State]] = []

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
        state = self.state
        if state == "half_open":
            if not success:
                self._cooldown = min(self._cooldown * 2, self.policy.max_cooldown_s)
                self._open(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.policy.probes:
                self._cooldown = self.policy.cooldown_s
                self._outcomes.clear()
                self._set("closed")
            return
        if state == "open":
            return  # a straggler from before the breaker opened
        self._outcomes.append((now, success))
        while self._outcomes and self._outcomes[0][0] < now - self.policy.window_s:
            self._outcomes.popleft()
        n = len(self._outcomes)
        if n >= self.policy.min_calls:
            failures = sum(1 for _, ok in self._outcomes if not ok)
            if failures / n >= self.policy.failure_rate:
                self._open(now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._outcomes.clear()
        self._set("open")

    def _set(self, state: State) -> None:
        if state != self._state:
            self._state = state
            self.transitions.append((self._clock(), state))
            if self._on_change:
                self._on_change(self.name, state)
