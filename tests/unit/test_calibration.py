"""Threshold search with a finite-sample guarantee, on synthetic populations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tiergate.calibration import (
    accuracy_lower_bound,
    apply_temperature,
    binomial_pvalue,
    cascade_outcome,
    expected_calibration_error,
    fit_temperature,
    learn_then_test,
)
from tiergate.errors import CalibrationError


def population(n: int, rng: np.random.Generator, n_tiers: int = 2):
    """Tier i's confidence is informative; later tiers are more accurate."""
    conf, ok = [], []
    for i in range(n_tiers):
        c = rng.uniform(0.5, 1.0, n)
        # P(correct | confidence) rises with confidence; later tiers are better.
        p_ok = np.clip(c + 0.06 * i, 0, 1)
        conf.append(c)
        ok.append(rng.uniform(size=n) < p_ok)
    return conf, ok


def test_temperature_one_is_identity_and_rows_stay_distributions() -> None:
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert np.array_equal(apply_temperature(p, 1.0), p)
    q = apply_temperature(p, 2.0)
    assert np.allclose(q.sum(axis=1), 1.0)
    assert q[0, 1] < 0.8  # softened


def test_fit_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20_000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(np.int64)
    reported = 1 / (1 + np.exp(-2 * z))  # twice too confident
    probs = np.stack([1 - reported, reported], axis=1)
    t = fit_temperature(probs, y)
    assert t == pytest.approx(2.0, rel=0.08)
    before = expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == y)
    calibrated = apply_temperature(probs, t)
    after = expected_calibration_error(calibrated.max(axis=1), calibrated.argmax(axis=1) == y)
    assert after < before / 2


def test_clopper_pearson_bound_has_exact_tail() -> None:
    lb = accuracy_lower_bound(850, 1000, 0.05)
    # P[X >= 850 | p = lb] = 0.05 defines the one-sided bound.
    assert stats.binom.sf(849, 1000, lb) == pytest.approx(0.05, rel=1e-6)
    assert lb < 0.85
    assert accuracy_lower_bound(0, 10, 0.05) == 0.0


def test_binomial_pvalue_is_small_only_when_errors_are_few() -> None:
    assert binomial_pvalue(50, 1000, 0.10) < 1e-6
    assert binomial_pvalue(100, 1000, 0.10) > 0.5


def test_cascade_outcome_by_hand() -> None:
    conf = [np.array([0.95, 0.6, 0.8]), np.array([0.7, 0.9, 0.99])]
    ok = [np.array([True, False, False]), np.array([False, True, True])]
    o = cascade_outcome(conf, ok, [1.0, 10.0], [0.8])
    assert o.answered_by.tolist() == [0, 1, 0]
    assert o.correct.tolist() == [True, True, False]
    assert o.cost.tolist() == [1.0, 11.0, 1.0]
    assert o.escalation_rate == pytest.approx(1 / 3)


def test_ltt_certifies_target_and_saves_cost() -> None:
    rng = np.random.default_rng(1)
    conf, ok = population(4000, rng)
    res = learn_then_test(conf, ok, [1.0, 10.0], 0.80, confidence=0.95)
    assert res.accuracy_lower_bound >= 0.80
    assert 0 < res.escalation_rate < 1
    assert res.expected_cost < 11.0
    assert res.n_certified >= 1 and res.method.startswith("learn-then-test")


def test_ltt_refuses_infeasible_target_with_best_bound() -> None:
    rng = np.random.default_rng(2)
    conf, ok = population(2000, rng)
    with pytest.raises(CalibrationError) as info:
        learn_then_test(conf, ok, [1.0, 10.0], 0.99, confidence=0.95)
    best = info.value.fields["best_lower_bound"]
    assert 0.7 < best < 0.99
    assert "best accuracy these data certify" in info.value.message


def test_ltt_three_tiers_tests_a_common_threshold_and_the_pareto_front() -> None:
    rng = np.random.default_rng(3)
    conf, ok = population(6000, rng, n_tiers=3)
    res = learn_then_test(conf, ok, [1.0, 3.0, 10.0], 0.82, confidence=0.9)
    assert len(res.thresholds) == 2
    assert res.method == "learn-then-test/common-threshold+pareto-testing/binomial"
    assert res.accuracy_lower_bound >= 0.82
    assert res.expected_cost < 14.0


def test_three_tier_guarantee_holds_over_redraws_of_calibration_data() -> None:
    """Both sequences together (each at δ/2) still meet the target ≥ 1 - δ of the time."""
    rng = np.random.default_rng(5)
    big_conf, big_ok = population(200_000, rng, n_tiers=3)
    costs = [1.0, 3.0, 10.0]
    target, confidence, runs = 0.80, 0.9, 100
    hits = refused = 0
    for _ in range(runs):
        idx = rng.integers(0, 200_000, 1500)
        try:
            res = learn_then_test(
                [c[idx] for c in big_conf], [o[idx] for o in big_ok], costs, target,
                confidence=confidence, grid_points=25,
            )  # fmt: skip
        except CalibrationError:
            refused += 1
            hits += 1
            continue
        hits += cascade_outcome(big_conf, big_ok, costs, res.thresholds).accuracy >= target
    tol = 3 * np.sqrt(confidence * (1 - confidence) / runs)
    assert refused < runs // 4
    assert hits / runs >= confidence - tol


def test_guarantee_holds_over_redraws_of_calibration_data() -> None:
    """Fraction of calibration draws whose thresholds truly meet the target ≥ 1 - δ."""
    rng = np.random.default_rng(4)
    big_conf, big_ok = population(400_000, rng)
    target, confidence, runs = 0.785, 0.9, 200
    hits = refused = 0
    for _ in range(runs):
        idx = rng.integers(0, 400_000, 1500)
        try:
            res = learn_then_test(
                [c[idx] for c in big_conf], [o[idx] for o in big_ok], [1.0, 10.0], target,
                confidence=confidence, grid_points=100,
            )  # fmt: skip
        except CalibrationError:
            refused += 1  # a refusal makes no claim, so it cannot violate the guarantee
            hits += 1
            continue
        true = cascade_outcome(big_conf, big_ok, [1.0, 10.0], res.thresholds).accuracy
        hits += true >= target
    # Allow the study's own sampling error (3 standard errors of a binomial proportion).
    tol = 3 * np.sqrt(confidence * (1 - confidence) / runs)
    assert refused < runs // 4, "the study must mostly deploy thresholds to test anything"
    assert hits / runs >= confidence - tol


def test_default_target_is_a_point_under_the_last_tiers_certified_accuracy() -> None:
    from tiergate.offline import default_target

    correct = np.array([True] * 1620 + [False] * 293)  # 84.7 % of 1,913
    bound = accuracy_lower_bound(1620, 1913, 0.05)
    target = default_target(correct, 0.95)
    assert bound - 0.011 < target <= bound - 0.01
    assert round(target * 1000) == target * 1000  # 0.1-point steps
    # always leaves the all-escalate hypothesis certifiable
    assert binomial_pvalue(293, 1913, 1 - target) <= 0.05


def test_three_tier_pareto_front_matches_a_point_by_point_replay() -> None:
    """The vectorised 3-tier front is the front of every grid point replayed one by one."""
    import itertools

    from tiergate.calibration import _grid, _pareto_order

    rng = np.random.default_rng(7)
    conf, ok = population(700, rng, n_tiers=3)
    costs = [1.0, 3.0, 10.0]
    grid = _grid(2, 40)
    points = []
    for lam in itertools.product(grid.tolist(), repeat=2):
        o = cascade_outcome(conf, ok, costs, lam)
        points.append((o.accuracy, float(o.cost.mean()), lam))
    points.sort(key=lambda p: (p[1], -p[0]))
    front, best = [], -1.0
    for acc, cost, lam in points:
        if acc > best:
            front.append((acc, cost, lam))
            best = acc
    front.sort(key=lambda p: (-p[0], p[1]))
    want = [lam for _, _, lam in front]
    got = _pareto_order(conf, ok, costs, grid, 3, np.arange(700))
    assert got == want and len(got) > 5
