"""Deadlines, retries under a budget, circuit breakers, admission control, faults."""

from __future__ import annotations

from tiergate.resilience.admission import Admission
from tiergate.resilience.breaker import BreakerPolicy, CircuitBreaker
from tiergate.resilience.faults import FaultInjector, FaultSpec
from tiergate.resilience.retry import Backoff, RetryBudget

__all__ = [
    "Admission",
    "Backoff",
    "BreakerPolicy",
    "CircuitBreaker",
    "FaultInjector",
    "FaultSpec",
    "RetryBudget",
]
