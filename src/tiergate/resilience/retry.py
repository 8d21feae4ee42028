"""Retries bounded by a budget, so retries cannot amplify an outage.

A :class:`RetryBudget` is a token bucket: every first attempt deposits ``ratio``
tokens (capped at ``max_tokens``), every retry withdraws one. Retries are therefore at
most ``ratio`` × attempts plus a small burst — under a total outage the retry volume
stays at ~``ratio`` of traffic instead of multiplying it (the Finagle/gRPC design).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "RetryBudget"]


class RetryBudget:
    """Token bucket of retries; see the module docstring."""

    def __init__(self, ratio: float = 0.1, max_tokens: float = 10.0) -> None:
        if not 0 <= ratio <= 1 or max_tokens < 0:
            raise ValueError("ratio in [0, 1], max_tokens >= 0")
        self.ratio = ratio
        self.max_tokens = max_tokens
        self._tokens = max_tokens
        self.attempts = 0
        self.retries = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio}, max_tokens={self.max_tokens})"

    def on_attempt(self) -> None:
        """Call once per first attempt (not per retry)."""
        self.attempts += 1
        self._tokens = min(self.max_tokens, self._tokens + self.ratio)

    def try_retry(self) -> bool:
        """Withdraw a token for one retry; ``False`` when the budget is spent."""
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.retries += 1
            return True
        self.refused += 1
        return False


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**n))``."""

    base_s: float = 0.005
    cap_s: float = 0.05

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        upper = min(self.cap_s, self.base_s * (2**retry_number))
        return (rng or random).uniform(0, upper)
