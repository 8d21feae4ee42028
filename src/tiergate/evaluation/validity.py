"""Does the calibration guarantee hold? A resampling study on real labelled data.

The guarantee says: with probability ≥ ``confidence`` over an iid draw of calibration
data, the deployed thresholds have accuracy ≥ target *on the distribution the data
come from*; a refusal (target infeasible) makes no claim and so cannot break it.

Two schemes, both repeated ``runs`` times:

- ``bootstrap`` (the exact setting of the guarantee): the pool of labelled examples *is*
  the distribution; calibration sets are drawn iid (with replacement) from it, and each
  calibration's accuracy is measured on the whole pool — its true accuracy, no test noise.
- ``split``: calibrate on a random part, measure on the disjoint rest. The rest is a
  finite sample, anti-correlated with the calibration part (an easy calibration draw
  leaves a hard test part), so this check is pessimistic by about one test-set standard
  error; it is reported with that noise stated, not as the verdict.

The verdict allows for the study's own sampling error with 3 binomial standard errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tiergate.calibration import (
    BoolArray,
    FloatArray,
    IntArray,
    apply_temperature,
    cascade_outcome,
    fit_temperature,
    learn_then_test,
)
from tiergate.errors import CalibrationError

__all__ = ["resampling_study"]


def resampling_study(
    probs: Sequence[FloatArray],
    y: IntArray,
    costs: Sequence[float],
    *,
    n_calibration: int,
    targets: Sequence[float],
    confidence: float = 0.95,
    runs: int = 200,
    seed: int = 0,
    scheme: str = "bootstrap",
) -> dict[str, Any]:
    """Run the study for each target; see the module docstring."""
    if scheme not in ("bootstrap", "split"):
        raise ValueError("scheme must be 'bootstrap' or 'split'")
    n = len(y)
    if not 0 < n_calibration < n:
        raise ValueError("n_calibration must leave a non-empty test part")
    rng = np.random.default_rng(seed)
    n_classes = probs[0].shape[1]
    correct: list[BoolArray] = [p.argmax(axis=1) == y for p in probs]
    out: dict[str, Any] = {
        "n_pool": n, "n_calibration": n_calibration, "n_test": n - n_calibration,
        "confidence": confidence, "runs": runs, "seed": seed, "scheme": scheme, "targets": [],
    }  # fmt: skip
    everyone = np.arange(n)
    if scheme == "bootstrap":
        draws = [(rng.integers(0, n, n_calibration), everyone) for _ in range(runs)]
    else:
        perms = [rng.permutation(n) for _ in range(runs)]
        draws = [(p[:n_calibration], p[n_calibration:]) for p in perms]
    for target in targets:
        met = refused = 0
        accs: list[float] = []
        escal: list[float] = []
        cost_ratio: list[float] = []
        for cal, test in draws:
            temps = [fit_temperature(p[cal], y[cal]) for p in probs]
            conf = [apply_temperature(p, t).max(axis=1) for p, t in zip(probs, temps, strict=True)]
            try:
                res = learn_then_test(
                    [c[cal] for c in conf], [c[cal] for c in correct], costs, target,
                    confidence=confidence, n_classes=n_classes,
                )  # fmt: skip
            except CalibrationError:
                refused += 1
                continue
            o = cascade_outcome(
                [c[test] for c in conf], [c[test] for c in correct], costs, res.thresholds
            )
            accs.append(o.accuracy)
            escal.append(o.escalation_rate)
            cost_ratio.append(float(o.cost.mean()) / costs[-1])
            met += o.accuracy >= target
        deployed = runs - refused
        coverage = (met + refused) / runs
        tol = 3.0 * float(np.sqrt(confidence * (1 - confidence) / runs))
        out["targets"].append(
            {
                "target": target,
                "deployed": deployed,
                "refused": refused,
                "met": met,
                "coverage": coverage,
                "coverage_among_deployed": met / deployed if deployed else None,
                "tolerance": tol,
                "holds": coverage >= confidence - tol,
                "test_accuracy": _quantiles(accs),
                "escalation_rate": _quantiles(escal),
                "cost_vs_last_tier": _quantiles(cost_ratio),
            }
        )
    return out


def _quantiles(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    a = np.asarray(xs)
    return {
        "min": float(a.min()), "p05": float(np.percentile(a, 5)), "median": float(np.median(a)),
        "mean": float(a.mean()), "p95": float(np.percentile(a, 95)), "max": float(a.max()),
    }  # fmt: skip
