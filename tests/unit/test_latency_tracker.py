"""LatencyTracker: a histogram quantile of recent latencies, O(1) per observation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiergate.tier import LatencyTracker

RESOLUTION = 0.025  # a bucket's midpoint is within 2.5 % of everything in the bucket


def sample_quantile(values: list[float] | np.ndarray, q: float) -> float:
    """The spec: the ceil(q·n)-th smallest value (no interpolation between values)."""
    return float(np.quantile(values, q, method="inverted_cdf"))


def test_nothing_observed_means_zero() -> None:
    assert LatencyTracker().expected() == 0.0


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
@pytest.mark.parametrize(
    "name", ["lognormal", "exponential", "uniform", "bimodal", "constant"]
)  # fmt: skip
def test_known_distributions_within_the_resolution(name: str, q: float) -> None:
    rng = np.random.default_rng(7)
    n = 256
    values = {
        "lognormal": rng.lognormal(np.log(0.005), 0.8, n),
        "exponential": 0.002 + rng.exponential(0.010, n),
        "uniform": rng.uniform(0.020, 0.040, n),
        "bimodal": np.where(rng.random(n) < 0.8, 0.001, 0.250) * rng.uniform(1, 1.2, n),
        "constant": np.full(n, 0.0123),
    }[name]
    tracker = LatencyTracker(window=n, quantile=q)
    for v in values:
        tracker.observe(float(v))
    assert tracker.expected() == pytest.approx(sample_quantile(values, q), rel=RESOLUTION)


@given(
    st.lists(st.floats(1e-6, 100.0), min_size=1, max_size=300),
    st.sampled_from([0.0, 0.25, 0.5, 0.9, 0.99, 1.0]),
)
def test_matches_the_sample_quantile_of_what_it_counts(values: list[float], q: float) -> None:
    window = 64
    tracker = LatencyTracker(window=window, quantile=q)
    for v in values:
        tracker.observe(v)
    # It counts the observations since the last drop of the older half (every 32).
    half = window // 2
    kept = len(values) if len(values) <= window else half + (len(values) - 1) % half + 1
    expected = sample_quantile(values[-kept:], q)
    assert tracker.expected() == pytest.approx(expected, rel=RESOLUTION + 1e-9)


def test_values_outside_the_range_are_clamped() -> None:
    tracker = LatencyTracker(quantile=0.5)
    tracker.observe(0.0)
    assert 0.0 < tracker.expected() <= 1.1e-6
    tracker = LatencyTracker(quantile=0.5)
    tracker.observe(1e4)
    assert 95.0 <= tracker.expected() <= 105.0


def test_old_latencies_age_out_after_about_a_window() -> None:
    tracker = LatencyTracker(window=64, quantile=0.9)
    for _ in range(200):
        tracker.observe(1.0)  # a slow spell
    for _ in range(16):
        tracker.observe(0.010)
    assert tracker.expected() == pytest.approx(1.0, rel=RESOLUTION)  # still remembered
    for _ in range(64 - 16):
        tracker.observe(0.010)
    assert tracker.expected() == pytest.approx(0.010, rel=RESOLUTION)  # gone after 64


def test_a_slowdown_shows_as_soon_as_it_passes_the_quantile() -> None:
    tracker = LatencyTracker(window=256, quantile=0.9)
    for _ in range(1000):
        tracker.observe(0.005)
    seen = 0
    while tracker.expected() < 0.1:
        tracker.observe(0.200)
        seen += 1
    # 0.2 s becomes the p90 once it is more than 10 % of the counted observations.
    assert seen <= 0.1 * 256 + 1
    assert tracker.expected() == pytest.approx(0.200, rel=RESOLUTION)


def test_storage_does_not_grow_with_observations() -> None:
    tracker = LatencyTracker()
    sizes = set()
    for i in range(20_000):
        tracker.observe(0.001 * (1 + i % 97))
        sizes.add((len(tracker._counts), len(tracker._current)))
    assert len(sizes) == 1


def test_validation() -> None:
    with pytest.raises(ValueError):
        LatencyTracker(window=1)
    with pytest.raises(ValueError):
        LatencyTracker(quantile=1.5)
    LatencyTracker(window=64, quantile=0.5, refresh=4)  # refresh: accepted, no longer needed
