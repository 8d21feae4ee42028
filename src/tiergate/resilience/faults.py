"""Fault injection for chaos testing: wrap a model adapter with latency, hangs, errors.

Like Envoy's fault filter, faults are configured per tier (``fault:`` in the config)
and are meant for staging and chaos suites, never for production traffic.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tiergate.models.base import ModelAdapter, Probabilities

__all__ = ["FaultInjector", "FaultSpec", "InjectedFault"]


class InjectedFault(Exception):
    """The exception an injected error raises (a model's own failure, not tiergate's)."""


@dataclass(frozen=True)
class FaultSpec:
    """What goes wrong, and how often (rates are per model call)."""

    delay_ms: float = 0.0
    delay_rate: float = 1.0
    hang_rate: float = 0.0
    error_rate: float = 0.0
    garbage_rate: float = 0.0
    flap_period_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("delay_rate", "hang_rate", "error_rate", "garbage_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.delay_ms < 0 or (self.flap_period_s is not None and self.flap_period_s <= 0):
            raise ValueError("delay_ms >= 0 and flap_period_s > 0")


class FaultInjector:
    """A :class:`ModelAdapter` that misbehaves as ``spec`` says, else delegates.

    With ``flap_period_s`` the model alternates: healthy for one period, failing every
    call for the next, and so on.
    """

    def __init__(
        self,
        inner: ModelAdapter,
        spec: FaultSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self._release = threading.Event()
        self.calls = 0

    @property
    def labels(self) -> tuple[str, ...]:
        return self.inner.labels

    @property
    def version(self) -> str:
        return self.inner.version

    def release(self) -> None:
        """Unblock hung calls (on shutdown)."""
        self._release.set()

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def predict_batch(self, texts: Sequence[str]) -> Probabilities:
        self.calls += 1
        s = self.spec
        if s.flap_period_s is not None:
            phase = int((self._clock() - self._start) / s.flap_period_s)
            if phase % 2 == 1:
                raise InjectedFault("injected fault: flapping tier in its failing phase")
        if s.hang_rate and self._draw() < s.hang_rate:
            self._release.wait()
            raise InjectedFault("injected fault: hung call released at shutdown")
        if s.delay_ms and self._draw() < s.delay_rate:
            self._sleep(s.delay_ms / 1000.0)
        if s.error_rate and self._draw() < s.error_rate:
            raise InjectedFault("injected fault: model raised")
        out = self.inner.predict_batch(texts)
        if s.garbage_rate and self._draw() < s.garbage_rate:
            bad = np.full_like(np.asarray(out, dtype=np.float64), np.nan)
            return bad[:, :1]  # wrong shape and NaN: must never become an answer
        return out
