"""A tier at run time: a model adapter with its threshold, price, timeout and pool."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tiergate.batching import MicroBatcher
from tiergate.calibration import apply_temperature
from tiergate.errors import ModelError
from tiergate.models.base import ModelAdapter, Probabilities, check_probabilities
from tiergate.resilience.breaker import BreakerPolicy, CircuitBreaker
from tiergate.resilience.retry import Backoff, RetryBudget

__all__ = ["LatencyTracker", "Tier"]


class LatencyTracker:
    """Recent latencies of a tier; ``expected()`` is a high quantile of them.

    Used to decide whether a tier still fits a request's remaining deadline. The
    quantile is recomputed after every ``refresh`` observations (every one while fewer
    than ``refresh`` are known), not on every request: it is on the hot path.
    """

    def __init__(self, window: int = 256, quantile: float = 0.9, refresh: int = 16) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._quantile = quantile
        self._refresh = max(1, refresh)
        self._unseen = 0
        self._expected = 0.0

    def observe(self, seconds: float) -> None:
        self._values.append(seconds)
        self._unseen += 1

    def expected(self) -> float:
        """Expected latency in seconds (0 until something was observed)."""
        if self._unseen and (self._unseen >= self._refresh or len(self._values) <= self._refresh):
            self._expected = float(np.quantile(np.fromiter(self._values, float), self._quantile))
            self._unseen = 0
        return self._expected


class Tier:
    """One tier: runs its adapter in its own thread pool and prices each call.

    ``threshold`` is ``None`` for the last tier (it always answers).
    """

    def __init__(
        self,
        name: str,
        adapter: ModelAdapter,
        *,
        threshold: float | None,
        temperature: float = 1.0,
        cost_per_call: float | None = None,
        timeout_s: float = 2.0,
        workers: int = 1,
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        max_queue: int = 1024,
        aimd_target_s: float | None = None,
        breaker: BreakerPolicy | None = None,
        max_retries: int = 1,
        retry_budget: RetryBudget | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.name = name
        self.adapter = adapter
        self.threshold = threshold
        self.temperature = temperature
        self.cost_per_call = cost_per_call if cost_per_call is not None else 0.0
        self.cost_derived = cost_per_call is None
        self.timeout_s = timeout_s
        self.latency = LatencyTracker()
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"tier-{name}")
        self.labels = adapter.labels
        self.version = adapter.version
        self.breaker = CircuitBreaker(name, breaker or BreakerPolicy(), clock=clock)
        self.max_retries = max_retries
        self.retry_budget = retry_budget or RetryBudget()
        self.backoff = backoff or Backoff()
        self.batcher = MicroBatcher(
            self._run_pool,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            max_queue=max_queue,
            name=name,
            aimd_target_s=aimd_target_s,
            clock=clock,
        )

    def __repr__(self) -> str:
        return (
            f"Tier({self.name!r}, threshold={self.threshold}, T={self.temperature:.3g}, "
            f"cost={self.cost_per_call:.3g}, timeout_s={self.timeout_s})"
        )

    def describe(self) -> dict[str, Any]:
        """Identity and policy of this tier, as reports and /readyz show them."""
        return {
            "name": self.name,
            "model_version": self.version,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "cost_per_call": self.cost_per_call,
            "cost_derived": self.cost_derived,
        }

    def predict_sync(self, texts: Sequence[str]) -> Probabilities:
        """Validated, temperature-scaled probabilities; raises ModelError on garbage."""
        try:
            raw = self.adapter.predict_batch(texts)
        except ModelError:
            raise
        except Exception as exc:  # a model's own failure becomes a typed ModelError
            raise ModelError(
                f"tier {self.name!r} failed: {type(exc).__name__}: {exc}", tier=self.name
            ) from exc
        probs = check_probabilities(raw, len(texts), len(self.labels), self.name)
        return apply_temperature(probs, self.temperature)

    async def predict(self, texts: Sequence[str], deadline: float | None = None) -> Probabilities:
        """Queue for the tier's micro-batcher; the model runs off the event loop.

        The caller bounds the wait (its deadline); ``latency`` tracks queue + model time.
        """
        start = self._clock()
        probs = await self.batcher.submit(texts, deadline)
        self.latency.observe(self._clock() - start)
        return probs

    async def _run_pool(self, texts: list[str]) -> Probabilities:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.predict_sync, texts)

    def measure_cost(self, sample: Sequence[str], cpu_second_price: float, calls: int = 20) -> None:
        """Derive ``cost_per_call`` from process CPU time of single calls (warm)."""
        # Price the model itself: injected faults (chaos tests) must not hang start-up.
        adapter: ModelAdapter = getattr(self.adapter, "inner", self.adapter)
        adapter.predict_batch(sample[:1])  # warm-up
        t0 = time.process_time()
        for i in range(calls):
            adapter.predict_batch([sample[i % len(sample)]])
        cpu = (time.process_time() - t0) / calls
        if self.cost_derived:
            self.cost_per_call = cpu * cpu_second_price

    def close(self) -> None:
        release = getattr(self.adapter, "release", None)
        if callable(release):  # let injected hangs end so the process can exit
            release()
        self._pool.shutdown(wait=False, cancel_futures=True)
