"""Calibrated cascades: confidence calibration and thresholds with a guarantee.

**Confidence calibration.** Each tier's probabilities are temperature-scaled: the
temperature ``T`` minimising the negative log-likelihood on the calibration split is
fitted, and a tier's *confidence* is the largest class probability of
``softmax(log p / T)``. Expected calibration error (ECE) is reported before and after.

**Thresholds (Learn then Test).** A request is accepted by tier *i* when its
confidence is at least ``threshold[i]``; the last tier always answers. We want the
cheapest thresholds whose cascade accuracy is at least the target ``A`` — not on the
calibration data, where it is easy to over-fit, but on future data from the same
distribution, with probability at least ``1 - delta`` over the draw of the
calibration data. Following *Learn then Test* (Angelopoulos et al., 2021):

1. Every candidate threshold vector ``λ`` on a fixed grid is a null hypothesis
   ``H_λ: accuracy(λ) < A``.
2. Its p-value is exact for 0/1 errors: with ``k`` mistakes among ``n`` calibration
   examples, ``p = P[Binomial(n, 1 - A) ≤ k]`` (the Clopper-Pearson test).
3. Hypotheses are tested in a fixed order, from the safest (escalate everything) to the
   cheapest, each at level ``delta``, stopping at the first one not rejected
   (fixed-sequence testing). This controls the family-wise error at ``delta`` without a
   multiplicity correction, so every rejected ``λ`` meets the target simultaneously.
4. Among the rejected (certified) ``λ``, the one with the lowest expected cost on the
   calibration data is chosen.

With two tiers the order is simply the threshold grid from 1 down. With more tiers the
grid is multi-dimensional, and two fixed sequences run side by side, each at level
``delta / 2`` (by the union bound every certified ``λ`` of either still meets the target
simultaneously with probability ``1 - delta``):

- *a common threshold*: every tier accepts at the same calibrated confidence ``t``
  ("answer when the probability of being right is at least ``t``"), ``t`` from 1 down,
  tested on all the data — a data-independent order, so nothing is spent on learning it;
- *Pareto testing* (Laufer-Goldshtein et al., 2023): the cost/accuracy Pareto front is
  found on a separate 30 % of the data and tested in order of its accuracy there, on
  the remaining 70 % — it can find unequal thresholds, but its order is noisy when the
  data are few.

On the demo's three tiers (1,913 calibration examples) the common threshold certified a
cascade at 0.41 of always-MPNet's cost where Pareto testing alone stopped at 0.54. If
even the safest hypothesis is not rejected the target is infeasible and
:class:`CalibrationError` reports the best lower bound the data supports.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

from tiergate.errors import CalibrationError

__all__ = [
    "CascadeOutcome",
    "LTTResult",
    "accuracy_lower_bound",
    "apply_temperature",
    "binomial_pvalue",
    "cascade_outcome",
    "expected_calibration_error",
    "fit_temperature",
    "learn_then_test",
    "reliability_table",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

_EPS = 1e-12


def apply_temperature(probs: FloatArray, temperature: float) -> FloatArray:
    """``softmax(log(p) / T)`` row-wise; ``T = 1`` returns the input unchanged."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def fit_temperature(probs: FloatArray, y: IntArray) -> float:
    """The temperature minimising negative log-likelihood of labels ``y``."""
    logp = np.log(np.clip(probs, _EPS, 1.0))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(lse - z[np.arange(len(y)), y]))

    res = optimize.minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(confidence: FloatArray, correct: BoolArray, bins: int = 15) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted."""
    table = reliability_table(confidence, correct, bins)
    n = max(len(confidence), 1)
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in table) / n)


def reliability_table(
    confidence: FloatArray, correct: BoolArray, bins: int = 15
) -> list[dict[str, float]]:
    """Per non-empty bin: its range, count, mean confidence and accuracy."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            rows.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "count": int(mask.sum()),
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return rows


def binomial_pvalue(errors: int, n: int, max_error_rate: float) -> float:
    """p-value of ``H0: error rate > max_error_rate`` after ``errors`` in ``n`` trials."""
    return float(stats.binom.cdf(errors, n, max_error_rate))


def accuracy_lower_bound(correct: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson lower bound on accuracy at confidence ``1 - delta``."""
    if n == 0 or correct == 0:
        return 0.0
    return float(stats.beta.ppf(delta, correct, n - correct + 1))


@dataclass(frozen=True)
class CascadeOutcome:
    """Which tier answered each example, whether it was right, what it cost."""

    answered_by: IntArray
    correct: BoolArray
    cost: FloatArray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else 0.0

    @property
    def escalation_rate(self) -> float:
        """Share of examples the first tier did not answer."""
        return float((self.answered_by > 0).mean()) if len(self.answered_by) else 0.0

    def tier_shares(self, n_tiers: int) -> list[float]:
        counts = np.bincount(self.answered_by, minlength=n_tiers)
        return [float(c) / max(len(self.answered_by), 1) for c in counts]


def cascade_outcome(
    confidences: Sequence[FloatArray],
    correct: Sequence[BoolArray],
    costs: Sequence[float],
    thresholds: Sequence[float],
) -> CascadeOutcome:
    """Replay the cascade policy offline over precomputed per-tier scores."""
    n_tiers = len(confidences)
    if len(thresholds) != n_tiers - 1:
        raise ValueError(f"need {n_tiers - 1} thresholds, got {len(thresholds)}")
    n = len(confidences[0])
    answered_by = np.full(n, n_tiers - 1, dtype=np.int64)
    pending = np.ones(n, dtype=bool)
    for i, thr in enumerate(thresholds):
        accept = pending & (confidences[i] >= thr)
        answered_by[accept] = i
        pending &= ~accept
    stacked = np.stack(correct)
    ok = stacked[answered_by, np.arange(n)]
    cum_cost = np.cumsum(np.asarray(costs, dtype=np.float64))
    return CascadeOutcome(answered_by, ok, cum_cost[answered_by])


@dataclass(frozen=True)
class LTTResult:
    """The chosen thresholds and what was certified about them."""

    thresholds: tuple[float, ...]
    target_accuracy: float
    confidence: float
    accuracy: float
    accuracy_lower_bound: float
    escalation_rate: float
    tier_shares: tuple[float, ...]
    expected_cost: float
    n: int
    n_certified: int
    n_tested: int
    method: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "target_accuracy": self.target_accuracy,
            "confidence": self.confidence,
            "accuracy": self.accuracy,
            "accuracy_lower_bound": self.accuracy_lower_bound,
            "escalation_rate": self.escalation_rate,
            "tier_shares": list(self.tier_shares),
            "expected_cost": self.expected_cost,
            "n": self.n,
            "n_certified": self.n_certified,
            "n_tested": self.n_tested,
            "method": self.method,
            **self.extra,
        }


_NEVER = 1.0 + 1e-9  # a threshold no confidence reaches: always escalate


def _grid(n_classes: int, points: int) -> FloatArray:
    # A fixed, data-independent grid from "escalate everything" down to "accept all".
    floor = 1.0 / n_classes
    return np.concatenate([[_NEVER], np.linspace(1.0, floor, points)])


def learn_then_test(
    confidences: Sequence[FloatArray],
    correct: Sequence[BoolArray],
    costs: Sequence[float],
    target_accuracy: float,
    *,
    confidence: float = 0.95,
    n_classes: int = 2,
    grid_points: int | None = None,
    seed: int = 0,
) -> LTTResult:
    """Cheapest thresholds with ``P[accuracy >= target] >= confidence`` (see module doc).

    Raises :class:`CalibrationError` (with the best achievable bound) when infeasible.
    """
    if not 0 < target_accuracy < 1:
        raise ValueError("target_accuracy must be in (0, 1)")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    n_tiers = len(confidences)
    n = len(confidences[0])
    delta = 1.0 - confidence
    alpha = 1.0 - target_accuracy
    if n_tiers == 1:
        k = int(np.asarray(correct[0]).sum())
        lb = accuracy_lower_bound(k, n, delta)
        if binomial_pvalue(n - k, n, alpha) > delta:
            raise _infeasible(target_accuracy, confidence, lb, n)
        out = cascade_outcome(confidences, correct, costs, ())
        return _result((), out, target_accuracy, confidence, lb, n, 1, 1, "single-tier", 1)

    if n_tiers == 2:
        grid = _grid(n_classes, grid_points or 500)
        order: list[tuple[float, ...]] = [(float(t),) for t in grid]
        sequences = [(order, np.arange(n), delta)]
        method = "learn-then-test/fixed-sequence/binomial"
    else:
        # Two fixed sequences, each at delta / 2 (a union bound keeps the family-wise
        # error at delta): one common threshold for every tier, on all the data in a
        # data-independent order; and Pareto testing, its order learned on 30 %.
        grid = _grid(n_classes, grid_points or 500)
        common = [(float(t),) * (n_tiers - 1) for t in grid]
        per_tier = grid_points or max(6, round(40_000 ** (1 / (n_tiers - 1))))
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        n_opt = int(0.3 * n)
        opt_idx, test_idx = perm[:n_opt], perm[n_opt:]
        pareto = _pareto_order(
            confidences, correct, costs, _grid(n_classes, per_tier), n_tiers, opt_idx
        )
        sequences = [(common, np.arange(n), delta / 2), (pareto, test_idx, delta / 2)]
        method = "learn-then-test/common-threshold+pareto-testing/binomial"

    certified: list[tuple[tuple[float, ...], IntArray, float]] = []
    best_lb = 0.0
    tested = 0
    for order, idx, level in sequences:
        sub_conf = [c[idx] for c in confidences]
        sub_ok = [c[idx] for c in correct]
        m = len(idx)
        for lam in order:
            tested += 1
            o = cascade_outcome(sub_conf, sub_ok, costs, lam)
            k = int(o.correct.sum())
            best_lb = max(best_lb, accuracy_lower_bound(k, m, level))
            if binomial_pvalue(m - k, m, alpha) > level:
                break
            certified.append((lam, idx, level))
    if not certified:
        raise _infeasible(target_accuracy, confidence, best_lb, n)

    full = [cascade_outcome(confidences, correct, costs, lam) for lam, _, _ in certified]
    best = min(range(len(certified)), key=lambda i: (float(full[i].cost.mean()), -full[i].accuracy))
    chosen, idx, level = certified[best]
    o_test = cascade_outcome(
        [c[idx] for c in confidences], [c[idx] for c in correct], costs, chosen
    )
    lb = accuracy_lower_bound(int(o_test.correct.sum()), len(idx), level)
    n_cert = len(certified)
    return _result(
        chosen, full[best], target_accuracy, confidence, lb, n, n_cert, tested, method, n_tiers
    )


def _pareto_order(
    confidences: Sequence[FloatArray],
    correct: Sequence[BoolArray],
    costs: Sequence[float],
    grid: FloatArray,
    n_tiers: int,
    idx: IntArray,
) -> list[tuple[float, ...]]:
    conf = [c[idx] for c in confidences]
    ok = [c[idx] for c in correct]
    points: list[tuple[float, float, tuple[float, ...]]] = []
    if n_tiers == 3:
        # Every (t1, t2) at once: tier 0 keeps A0[a, i]; of the rest, tier 1 keeps A1[b, i].
        a0 = (conf[0][None, :] >= grid[:, None]).astype(np.float64)
        a1 = (conf[1][None, :] >= grid[:, None]).astype(np.float64)
        ok0, ok1, ok2 = (np.asarray(o, dtype=np.float64) for o in ok)
        m = max(len(ok0), 1)
        right = (a0 @ ok0)[:, None] + (1.0 - a0) @ (a1 * ok1 + (1.0 - a1) * ok2).T
        spent = costs[0] * len(ok0) + (1.0 - a0) @ (costs[1] + (1.0 - a1) * costs[2]).T
        acc, cost = (right / m).ravel(), (spent / m).ravel()  # row-major: product order
        # Pareto front: by cost (then accuracy, then grid order), keep each point that beats
        # every cheaper point's accuracy; then safest (most accurate) first.
        order = np.lexsort((np.arange(len(acc)), -acc, cost))
        a = acc[order]
        before = np.concatenate([[-1.0], np.maximum.accumulate(a)[:-1]])
        keep = order[a > before]
        keep = keep[np.argsort(-acc[keep], kind="stable")]
        g = grid.tolist()
        return [(g[k // len(g)], g[k % len(g)]) for k in keep.tolist()]
    for lam in itertools.product(grid.tolist(), repeat=n_tiers - 1):
        o = cascade_outcome(conf, ok, costs, lam)
        points.append((o.accuracy, float(o.cost.mean()), tuple(lam)))
    # Pareto front: sort by cost, keep points that beat every cheaper point's accuracy.
    points.sort(key=lambda p: (p[1], -p[0]))
    front = []
    best_acc = -1.0
    for acc_, cost_, lam in points:
        if acc_ > best_acc:
            front.append((acc_, cost_, lam))
            best_acc = acc_
    front.sort(key=lambda p: (-p[0], p[1]))
    return [lam for _, _, lam in front]


def _infeasible(target: float, confidence: float, best_lb: float, n: int) -> CalibrationError:
    return CalibrationError(
        f"no thresholds reach accuracy {target:.4f} with confidence {confidence:.2f} "
        f"on {n} calibration examples; the best accuracy these data certify is "
        f"{best_lb:.4f}. Lower the target, lower the confidence, or add calibration data.",
        target_accuracy=target,
        confidence=confidence,
        best_lower_bound=best_lb,
        n=n,
    )


def _result(
    lam: tuple[float, ...],
    o: CascadeOutcome,
    target: float,
    confidence: float,
    lb: float,
    n: int,
    n_certified: int,
    n_tested: int,
    method: str,
    n_tiers: int,
) -> LTTResult:
    return LTTResult(
        thresholds=tuple(min(t, _NEVER) for t in lam),
        target_accuracy=target,
        confidence=confidence,
        accuracy=o.accuracy,
        accuracy_lower_bound=lb,
        escalation_rate=o.escalation_rate,
        tier_shares=tuple(o.tier_shares(n_tiers)),
        expected_cost=float(o.cost.mean()),
        n=n,
        n_certified=n_certified,
        n_tested=n_tested,
        method=method,
    )
