"""Serve-time audit of semantic hits: measure the false-hit rate, tighten when needed.

A sample of semantic hits is re-answered by the real cascade in the background; a hit
is *false* when the cascade's answer differs from the cached one. The monitor keeps the
recent audits (similarity, false?) that are still relevant at the current threshold and
tightens the threshold when the Clopper-Pearson bounds say the declared bound is not met:

- ``trigger="upper"`` (default, conservative): once ``min_audits`` audits are in (the
  fewest that *could* certify the bound with zero false hits), tighten whenever the
  upper confidence bound exceeds the bound, i.e. keep the threshold only while the live
  data certify it, as the offline calibration did;
- in both modes: tighten at once when even the *lower* bound exceeds the bound (clear
  evidence, e.g. after a distribution shift); ``trigger="lower"`` uses only this rule.
  Because it is checked after every audit, the n-th check runs at level
  ``(1 - confidence) / (n (n + 1))``: these sum to ``1 - confidence``, so the chance
  of ever tightening on noise through this rule stays within the declared confidence.

After tightening, audits below the new threshold are dropped: those hits would no
longer happen.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from tiergate.cache.metrics import CacheMetrics, NullCacheMetrics
from tiergate.calibration import accuracy_lower_bound
from tiergate.errors import ConfigError

__all__ = ["AuditPolicy", "FalseHitMonitor", "false_hit_bounds"]

_log = logging.getLogger("tiergate.cache")


def false_hit_bounds(false_hits: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson ``(lower, upper)`` bounds on a rate, each at ``confidence``."""
    if n == 0:
        return 0.0, 1.0
    delta = 1.0 - confidence
    lower = accuracy_lower_bound(false_hits, n, delta)
    upper = 1.0 - accuracy_lower_bound(n - false_hits, n, delta)
    return lower, upper


@dataclass(frozen=True)
class AuditPolicy:
    """How semantic hits are audited and when the threshold tightens.

    ``rate``: share of hits re-checked; ``bound``: declared false-hit rate bound;
    ``confidence``: of the Clopper-Pearson bounds; ``step``: threshold increase per
    tightening; ``max_pending``: concurrent background audits (more are skipped);
    ``window``: audits remembered; ``min_audits``: audits before the upper-bound rule
    applies (default: the fewest that can certify ``bound`` with no false hits).
    """

    rate: float = 0.02
    bound: float = 0.01
    confidence: float = 0.95
    step: float = 0.01
    max_threshold: float = 1.0
    max_pending: int = 4
    window: int = 20_000
    min_audits: int | None = None
    trigger: Literal["upper", "lower"] = "upper"

    def __post_init__(self) -> None:
        for name, lo, hi in (("rate", 0, 1), ("bound", 0, 1), ("confidence", 0, 1)):
            value = getattr(self, name)
            if not lo <= value <= hi or (name != "rate" and value in (0, 1)):
                raise ConfigError(f"audit {name} must be in ({lo}, {hi}), got {value}")
        if self.step <= 0 or self.max_pending < 0 or self.window < 1:
            raise ConfigError("audit step must be > 0, max_pending >= 0 and window >= 1")
        if self.trigger not in ("upper", "lower"):
            raise ConfigError(f"audit trigger must be 'upper' or 'lower', got {self.trigger!r}")

    @property
    def required_audits(self) -> int:
        """``min_audits``, or the smallest n with upper bound ≤ ``bound`` after 0 false hits."""
        if self.min_audits is not None:
            return self.min_audits
        return math.ceil(math.log(1.0 - self.confidence) / math.log(1.0 - self.bound))


class FalseHitMonitor:
    """Audit outcomes at the current threshold; decides when to tighten it."""

    def __init__(
        self, policy: AuditPolicy, threshold: float, *, metrics: CacheMetrics | None = None
    ) -> None:
        self.policy = policy
        self.threshold = threshold
        self.tightenings = 0
        self.total_audits = 0
        self.total_false_hits = 0
        self._metrics = metrics or NullCacheMetrics()
        self._window: deque[tuple[float, bool]] = deque(maxlen=policy.window)
        self._metrics.threshold(threshold)

    def __repr__(self) -> str:
        return (
            f"FalseHitMonitor(threshold={self.threshold:.4f}, audits={self.audits}, "
            f"false_hits={self.false_hits}, upper_bound={self.upper_bound:.4f})"
        )

    @property
    def audits(self) -> int:
        """Audits that count at the current threshold."""
        return len(self._window)

    @property
    def false_hits(self) -> int:
        return sum(f for _, f in self._window)

    @property
    def false_hit_rate(self) -> float:
        """Measured false-hit rate at the current threshold (0 before any audit)."""
        return self.false_hits / self.audits if self.audits else 0.0

    @property
    def bounds(self) -> tuple[float, float]:
        return false_hit_bounds(self.false_hits, self.audits, self.policy.confidence)

    @property
    def upper_bound(self) -> float:
        return self.bounds[1]

    def record(self, similarity: float, false_hit: bool) -> float | None:
        """Add one audit; returns the new threshold if this audit tightened it."""
        if similarity < self.threshold:
            return None  # a hit the current threshold would no longer serve
        self.total_audits += 1
        self.total_false_hits += false_hit
        self._window.append((similarity, false_hit))
        n, k, p = self.audits, self.false_hits, self.policy
        upper = self.upper_bound
        self._metrics.audit(false_hit, self.false_hit_rate, upper)
        spent = (1.0 - p.confidence) / (n * (n + 1))  # anytime-valid over repeated checks
        lower = false_hit_bounds(k, n, 1.0 - spent)[0]
        evidence = lower > p.bound
        uncertified = p.trigger == "upper" and self.audits >= p.required_audits and upper > p.bound
        if not (evidence or uncertified) or self.threshold >= p.max_threshold:
            return None
        return self._tighten(lower, upper)

    def _tighten(self, lower: float, upper: float) -> float:
        old = self.threshold
        self.threshold = min(self.policy.max_threshold, old + self.policy.step)
        self.tightenings += 1
        _log.warning(
            "semantic cache: %d false hits in %d audits (rate %.4f, %.0f%% bounds "
            "[%.4f, %.4f]) against a bound of %.4f; threshold %.4f -> %.4f%s",
            self.false_hits, self.audits, self.false_hit_rate,
            100 * self.policy.confidence, lower, upper, self.policy.bound, old, self.threshold,
            " (semantic cache now effectively off)"
            if self.threshold >= self.policy.max_threshold else "",
        )  # fmt: skip
        kept = [a for a in self._window if a[0] >= self.threshold]
        self._window.clear()
        self._window.extend(kept)
        self._metrics.threshold(self.threshold)
        return self.threshold
