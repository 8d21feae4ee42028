"""What the calibration split says the monitor should see, stored in the artifact.

Written by ``tiergate calibrate`` into the artifact's ``monitor`` section:

* per non-final tier, among the answers it *accepts* at the chosen thresholds: how many,
  how many were right, how often the last tier agrees, and how often the tier is right
  when the last tier agrees and when it disagrees. Shadow evaluation measures agreement
  online; these two conditional rates turn it into an estimate of accuracy (the last
  tier is not always right either, so raw agreement under-states a good cheap tier);
* per tier, a histogram of the confidences of the inputs that reach it: the reference of
  the input-drift test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tiergate.monitor.window import Interval, binomial_interval

__all__ = ["BINS", "AgreementModel", "confidence_bin", "reference_stats"]

BINS = 20  # confidence histogram bins on [1/K, 1]


def confidence_bin(confidence: float, n_classes: int) -> int:
    """Bin of a top-class probability on ``[1/K, 1]`` in :data:`BINS` equal bins."""
    low = 1.0 / n_classes
    b = int((confidence - low) / (1.0 - low) * BINS)
    return 0 if b < 0 else BINS - 1 if b >= BINS else b


def reference_stats(
    tier_names: Sequence[str],
    confidences: Sequence[npt.NDArray[np.float64]],
    predictions: Sequence[npt.NDArray[np.int64]],
    y: npt.NDArray[np.int64],
    thresholds: Sequence[float],
    n_classes: int,
) -> dict[str, Any]:
    """The artifact's ``monitor`` section (see the module docstring)."""
    n = len(y)
    pending = np.ones(n, dtype=bool)
    last = predictions[-1]
    tiers: dict[str, Any] = {}
    for i, name in enumerate(tier_names):
        reach = pending.copy()
        low = 1.0 / n_classes
        bins = np.clip(((confidences[i][reach] - low) / (1.0 - low) * BINS).astype(int), 0,
                       BINS - 1)  # fmt: skip
        entry: dict[str, Any] = {
            "reached": int(reach.sum()),
            "confidence_histogram": np.bincount(bins, minlength=BINS).tolist(),
        }
        if i < len(thresholds):
            accept = reach & (confidences[i] >= thresholds[i])
            right = predictions[i] == y
            agree = predictions[i] == last
            entry.update(
                accepted=int(accept.sum()),
                accepted_correct=int((accept & right).sum()),
                agree=int((accept & agree).sum()),
                agree_correct=int((accept & agree & right).sum()),
                disagree=int((accept & ~agree).sum()),
                disagree_correct=int((accept & ~agree & right).sum()),
            )
            pending &= ~accept
        tiers[name] = entry
    return {"bins": BINS, "n_classes": n_classes, "n": n, "tiers": tiers}


class AgreementModel:
    """Accuracy of a tier's accepted answers from their agreement with the last tier.

    ``accuracy = a · P(right | agree) + (1 - a) · P(right | disagree)``, with ``a`` the
    agreement rate measured online and the two conditional rates from the calibration
    split. The interval combines the exact interval of ``a`` with those of the two rates
    (each at the same confidence; conservative). It assumes the conditional rates hold
    on today's traffic: under strong drift they may not, which is what label feedback is
    for. Without a reference the last tier is taken as right (estimate = agreement).
    """

    def __init__(self, reference: dict[str, Any] | None) -> None:
        self.reference = reference
        self.corrected = bool(reference and reference.get("agree"))

    def estimate(self, agree: int, n: int, confidence: float) -> dict[str, Any]:
        a = binomial_interval(agree, n, confidence)
        source = "calibration" if self.corrected else "last_tier"
        out: dict[str, Any] = {
            "n": n,
            "agree": agree,
            "agreement": a.rate,
            "reference": source,
            "agreement_lower": a.lower,
            "agreement_upper": a.upper,
        }
        if not self.corrected or a.rate is None:
            out.update(estimate=a.rate, lower=a.lower, upper=a.upper)
            return out
        ref = self.reference or {}
        pa = binomial_interval(ref["agree_correct"], ref["agree"], confidence)
        pd = _rate_or_prior(ref["disagree_correct"], ref["disagree"], confidence)
        point = a.rate * (pa.rate or 0.0) + (1.0 - a.rate) * (pd.rate or 0.0)

        def mix(p_agree: float, p_dis: float, share: float) -> float:
            return share * p_agree + (1.0 - share) * p_dis

        # Accuracy rises with agreement when P(right|agree) > P(right|disagree): the
        # extreme ends of the interval pair each rate's bound with the matching end of a.
        lows = [mix(pa.lower, pd.lower, s) for s in (a.lower, a.upper)]
        highs = [mix(pa.upper, pd.upper, s) for s in (a.lower, a.upper)]
        out.update(estimate=point, lower=min(lows), upper=max(highs))
        return out


def _rate_or_prior(k: int, n: int, confidence: float) -> Interval:
    # No disagreement seen in calibration: nothing known about it; [0, 1] with rate 0.5.
    if n == 0:
        return Interval(0, 0, 0.5, 0.0, 1.0)
    return binomial_interval(k, n, confidence)
