"""Admission control and the retry budget."""

from __future__ import annotations

import pytest

from tiergate.errors import OverloadError
from tiergate.resilience import Admission, Backoff, RetryBudget


def test_admission_sheds_past_the_bound_and_recovers() -> None:
    a = Admission(3, retry_after_s=2)
    a.acquire(2)
    a.acquire(1)
    with pytest.raises(OverloadError) as info:
        a.acquire(1)
    assert info.value.retry_after_s == 2 and a.shed == 1
    a.release(2)
    a.acquire(2)
    assert a.inflight == 3


def test_oversized_request_is_admitted_when_idle() -> None:
    a = Admission(3)
    a.acquire(10)  # a batch bigger than the bound still runs on an idle service
    with pytest.raises(OverloadError):
        a.acquire(1)


def test_retry_budget_bounds_retries_to_a_share_of_attempts() -> None:
    b = RetryBudget(ratio=0.1, max_tokens=5)
    for _ in range(1000):
        b.on_attempt()
        b.try_retry()
    assert b.retries <= 0.1 * 1000 + 5
    assert b.retries >= 0.1 * 1000 - 1
    assert b.refused > 0


def test_backoff_is_bounded_and_grows() -> None:
    import random

    rng = random.Random(0)
    back = Backoff(base_s=0.01, cap_s=0.05)
    assert all(0 <= back.delay(n, rng) <= 0.05 for n in range(10) for _ in range(20))
    assert max(back.delay(0, rng) for _ in range(200)) <= 0.01
