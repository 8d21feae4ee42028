"""Success counts over a sliding window and since start, with exact intervals."""

from __future__ import annotations

from collections import deque
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
    """Successes among the last ``size`` trials, and since start.

    A count window, not a time window: an estimate over the last ``size`` shadow verdicts
    or labels has the same statistical power at 5 requests a second or 5000, and a
    quiet hour does not empty it. O(1) per trial (a ring of bits and running counts).
    """

    __slots__ = ("_ring", "k", "total_k", "total_n")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._ring: deque[bool] = deque(maxlen=size)
        self.k = 0  # successes in the window
        self.total_n = self.total_k = 0  # since start

    def __repr__(self) -> str:
        return (
            f"SuccessWindow(window: {self.k}/{self.n}, since start: {self.total_k}/{self.total_n})"
        )

    @property
    def n(self) -> int:
        return len(self._ring)

    def add(self, success: bool) -> None:
        ring = self._ring
        if len(ring) == ring.maxlen and ring[0]:
            self.k -= 1
        ring.append(success)
        self.total_n += 1
        if success:
            self.k += 1
            self.total_k += 1

    def reset_window(self) -> None:
        """Forget the window (e.g. after a policy change); keep the since-start totals."""
        self._ring.clear()
        self.k = 0

    def window(self, confidence: float) -> Interval:
        return binomial_interval(self.k, self.n, confidence)

    def since_start(self, confidence: float) -> Interval:
        return binomial_interval(self.total_k, self.total_n, confidence)
