"""`tiergate check`'s latency timeline: each send lands in the bucket of its send time."""

from __future__ import annotations

import pytest

from tiergate.evaluation.check import _timeline
from tiergate.loadgen import open_loop_count

# (rate, duration): rate * bucket is a whole number of sends per bucket.
RUNS = [(20, 0.3), (100, 0.3), (40, 0.5), (50, 1.0), (30, 2.0), (50, 3.0), (20, 7.0), (50, 10.0)]


@pytest.mark.parametrize(("rate", "duration_s"), RUNS)
def test_open_loop_sends_fill_buckets_evenly(rate: int, duration_s: float) -> None:
    n = open_loop_count(rate, duration_s)
    offsets = [i / rate for i in range(n)]  # what run_load records
    tl = _timeline(offsets, [1.0] * n, duration_s)
    counts = [p["n"] for p in tl["points"]]
    per_bucket = round(rate * tl["bucket_s"])
    assert counts == [per_bucket] * (n // per_bucket), tl
    assert [p["t_s"] for p in tl["points"]] == pytest.approx(
        [k * tl["bucket_s"] for k in range(len(counts))]
    )


def test_empty_timeline() -> None:
    assert _timeline([], [], 1.0) == {"bucket_s": 0.1, "points": []}
