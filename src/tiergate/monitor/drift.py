"""Drift alarms: accepted-answer accuracy below target, and inputs unlike calibration.

**Accuracy.** For each non-final tier, the accuracy of its accepted answers over the
window (labelled feedback when there is enough of it, else shadow agreement: the last
tier as the reference) is judged once ``min_samples`` answers are in:

* ``alarm`` when the interval's *upper* end is below the target: the accepted answers
  are worse than the target with the stated confidence (a lower bound under the target
  alone is not evidence of a drop: with a few dozen samples it is always under it);
* ``uncertified`` when only the lower end is below the target;
* ``ok`` otherwise.

With ``auto_tighten`` an alarm raises the tier's threshold by ``tighten_step`` (the
tier escalates more), forgets the window (its answers were accepted under the old
threshold) and waits for ``min_samples`` fresh ones before judging again: tighten again
while the point estimate is under the target, stop when the lower end is back above it.
A recalibration or reload resets all of it. Every change is recorded.

**Input.** The confidences of the first tier on live traffic (sampled at most
``input_max_per_s`` per second, last ``input_window`` kept in a ring: O(1) each) are
compared every ``input_every`` samples with the calibration split's histogram by a
chi-square test of homogeneity. One rejection at ``input_pvalue`` is noise at high test
rates; the alarm needs two consecutive rejections and clears after two passes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy import stats

from tiergate.monitor.reference import BINS, confidence_bin

__all__ = ["AccuracyJudge", "InputDrift", "ThresholdChange"]

log = logging.getLogger("tiergate.monitor")

ThresholdChange = dict[str, Any]


def _now_iso(wall: Callable[[], float]) -> str:
    return datetime.fromtimestamp(wall(), UTC).isoformat(timespec="seconds")


class AccuracyJudge:
    """One tier's accuracy state and, with auto-tightening, its threshold moves."""

    def __init__(
        self, tier: str, target: float, *, min_samples: int, auto_tighten: bool, step: float,
        wall: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.tier = tier
        self.target = target
        self.min_samples = min_samples
        self.auto_tighten = auto_tighten
        self.step = step
        self._wall = wall
        self.state = "ok"
        self.source: str | None = None
        self.since: str | None = None
        # What the estimate was when the alarm was raised (a tightening restarts the
        # window, so the live estimate may then show nothing for a while).
        self.raised_at: dict[str, float] | None = None

    def judge(self, n: int, estimate: float | None, lower: float, upper: float,
              source: str) -> tuple[str, bool]:  # fmt: skip
        """New state, and whether the threshold should be raised now."""
        if n < self.min_samples or estimate is None:
            return self.state, False
        was = self.state
        if upper < self.target or (was == "alarm" and estimate < self.target):
            state = "alarm"
        elif lower >= self.target:
            state = "ok"
        else:
            state = "uncertified"
        if state == "alarm" and was != "alarm":
            self.since = _now_iso(self._wall)
            self.raised_at = {"estimate": estimate, "lower": lower, "upper": upper, "n": n}
            log.warning(
                "drift alarm: accepted answers of tier %r at %.3f (interval %.3f-%.3f, %s, n=%d) "
                "are below the target %.3f", self.tier, estimate, lower, upper, source, n,
                self.target,
            )  # fmt: skip
        elif was == "alarm" and state != "alarm":
            log.warning("drift alarm cleared for tier %r: %.3f (%s, n=%d)", self.tier,
                        estimate, source, n)  # fmt: skip
            self.since = None
            self.raised_at = None
        self.state = state
        self.source = source
        return state, self.auto_tighten and state == "alarm"

    def reset(self, target: float) -> None:
        self.target = target
        self.state = "ok"
        self.since = None
        self.source = None
        self.raised_at = None


class InputDrift:
    """Chi-square test of live first-tier confidences against the calibration split."""

    def __init__(
        self,
        tier: str,
        reference: Sequence[int],
        n_classes: int,
        *,
        window: int,
        every: int,
        max_per_s: float,
        pvalue: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if len(reference) != BINS:
            raise ValueError(f"reference histogram has {len(reference)} bins, want {BINS}")
        self.tier = tier
        self.reference = np.asarray(reference, dtype=np.int64)
        self.n_classes = n_classes
        self.window = window
        self.every = every
        self.gap_s = 1.0 / max_per_s
        self.pvalue_level = pvalue
        self._clock = clock
        self._wall = wall
        self._ring: deque[int] = deque(maxlen=window)
        self._counts = [0] * BINS
        self._next = -1e18
        self._since_test = 0
        self._rejections = 0
        self._passes = 0
        self.alarm = False
        self.since: str | None = None
        self.statistic: float | None = None
        self.pvalue: float | None = None
        self.tests = 0
        self.on_change: Callable[[bool], None] | None = None

    def __repr__(self) -> str:
        return f"InputDrift({self.tier!r}, window={self.window}, alarm={self.alarm})"

    def observe(self, confidence: float) -> None:
        """One live confidence (dropped unless the sampling gap has passed)."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self.gap_s
        b = confidence_bin(confidence, self.n_classes)
        ring = self._ring
        if len(ring) == self.window:
            self._counts[ring[0]] -= 1
        ring.append(b)
        self._counts[b] += 1
        self._since_test += 1
        if self._since_test >= self.every and len(ring) >= min(self.window, 2 * self.every):
            self._since_test = 0
            self.test()

    def test(self) -> float:
        """Run the test now on the current window; returns its p-value."""
        live = np.asarray(self._counts, dtype=np.int64)
        table = np.stack([self.reference, live])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2 or live.sum() == 0:
            self.statistic, self.pvalue = 0.0, 1.0
        else:
            res = stats.chi2_contingency(table, correction=False)
            self.statistic, self.pvalue = float(res.statistic), float(res.pvalue)
        self.tests += 1
        if self.pvalue < self.pvalue_level:
            self._rejections += 1
            self._passes = 0
        else:
            self._passes += 1
            self._rejections = 0
        before = self.alarm
        if not self.alarm and self._rejections >= 2:
            self.alarm = True
            self.since = _now_iso(self._wall)
            log.warning(
                "input drift on tier %r: confidences unlike the calibration split "
                "(chi2 %.1f, p=%.2g over %d samples)", self.tier, self.statistic, self.pvalue,
                int(live.sum()),
            )  # fmt: skip
        elif self.alarm and self._passes >= 2:
            self.alarm = False
            self.since = None
            log.warning("input drift on tier %r cleared (p=%.2g)", self.tier, self.pvalue)
        if before != self.alarm and self.on_change is not None:
            self.on_change(self.alarm)
        return self.pvalue

    def describe(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "pvalue": self.pvalue, "n": len(self._ring),
                "tests": self.tests, "alarm": self.alarm, "since": self.since}  # fmt: skip
