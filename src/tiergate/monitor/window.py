"""Counts over a sliding time window and since start, O(1) per observation.

A window is a ring of time buckets (``window_s / buckets`` seconds each) with running
totals: an observation adds to the current bucket and to the totals; moving to a new
bucket subtracts the buckets that fell out. Nothing scans the window or grows with
traffic, so the request path can observe at any rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from scipy import stats

__all__ = ["Interval", "SuccessWindow", "binomial_interval"]


@dataclass(frozen=True, slots=True)
class Interval:
    """``k`` successes in ``n`` trials and an exact (Clopper-Pearson) interval."""

    n: int
    k: int
    rate: float | None
    lower: float
    upper: float

    def to_dict(self) -> dict[str, float | int | None]:
        return {"n": self.n, "k": self.k, "rate": self.rate, "lower": self.lower,
                "upper": self.upper}  # fmt: skip


def binomial_interval(k: int, n: int, confidence: float) -> Interval:
    """Two-sided Clopper-Pearson interval; the same exact machinery as ``calibrate``.

    Each side holds with probability ``1 - (1 - confidence) / 2``; with ``n = 0`` the
    interval is ``[0, 1]``.
    """
    if n <= 0:
        return Interval(0, 0, None, 0.0, 1.0)
    alpha = (1.0 - confidence) / 2.0
    lower = 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.ppf(1.0 - alpha, k + 1, n - k))
    return Interval(n, k, k / n, lower, upper)


class SuccessWindow:
    """Successes and trials over the last ``window_s`` seconds and since start."""

    __slots__ = ("_bucket_s", "_clock", "_current", "_k", "_n", "k", "n", "total_k",
                 "total_n")  # fmt: skip

    def __init__(
        self, window_s: float, *, buckets: int = 60, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("window_s must be > 0 and buckets >= 1")
        self._bucket_s = window_s / buckets
        self._clock = clock
        self._n = [0] * buckets
        self._k = [0] * buckets
        self._current = math.floor(clock() / self._bucket_s)
        self.n = self.k = 0  # in the window
        self.total_n = self.total_k = 0  # since start

    def __repr__(self) -> str:
        return (
            f"SuccessWindow(window: {self.k}/{self.n}, since start: {self.total_k}/{self.total_n})"
        )

    def _advance(self) -> int:
        now = math.floor(self._clock() / self._bucket_s)
        size = len(self._n)
        if now != self._current:
            # At most one pass over the ring, however long the gap.
            for b in range(self._current + 1, min(now, self._current + size) + 1):
                slot = b % size
                self.n -= self._n[slot]
                self.k -= self._k[slot]
                self._n[slot] = self._k[slot] = 0
            self._current = now
        return now % size

    def add(self, success: bool) -> None:
        slot = self._advance()
        self._n[slot] += 1
        self.n += 1
        self.total_n += 1
        if success:
            self._k[slot] += 1
            self.k += 1
            self.total_k += 1

    def reset_window(self) -> None:
        """Forget the window (e.g. after a policy change); keep the since-start totals."""
        self._advance()
        self._n = [0] * len(self._n)
        self._k = [0] * len(self._k)
        self.n = self.k = 0

    def window(self, confidence: float) -> Interval:
        self._advance()
        return binomial_interval(self.k, self.n, confidence)

    def since_start(self, confidence: float) -> Interval:
        return binomial_interval(self.total_k, self.total_n, confidence)
