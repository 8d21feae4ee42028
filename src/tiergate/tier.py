"""A tier at run time: a model adapter with its threshold, price, timeout and pool."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tiergate.batching import MicroBatcher
from tiergate.calibration import apply_temperature
from tiergate.errors import ConfigError, ModelError, TiergateError
from tiergate.models.base import (
    AsyncModelAdapter,
    ModelAdapter,
    Probabilities,
    Scored,
    check_probabilities,
    is_async,
)
from tiergate.resilience.breaker import BreakerPolicy, CircuitBreaker
from tiergate.resilience.retry import Backoff, RetryBudget
from tiergate.threads import lower_this_thread

__all__ = ["LatencyTracker", "Tier"]


# LatencyTracker's histogram: log-spaced buckets, bucket i holding [LOW·g^i, LOW·g^(i+1)).
_LATENCY_LOW_S = 1e-6
_LATENCY_GROWTH = 1.05  # 5 % wide: a bucket's midpoint is within 2.5 % of all it holds
_LATENCY_BUCKETS = math.ceil(math.log(100.0 / _LATENCY_LOW_S) / math.log(_LATENCY_GROWTH))
_LATENCY_SCALE = 1.0 / math.log(_LATENCY_GROWTH)
_LATENCY_MIDPOINTS = tuple(
    _LATENCY_LOW_S * _LATENCY_GROWTH ** (i + 0.5) for i in range(_LATENCY_BUCKETS)
)


class LatencyTracker:
    """Recent latencies of a tier; ``expected()`` is a high quantile of them.

    Used to decide whether a tier still fits a request's remaining deadline, so it is on
    the hot path and both calls are O(1), whatever the traffic: latencies are counted in
    a fixed histogram of 5 %-wide log-spaced buckets from 1 µs to 100 s (values outside
    are clamped), and a cursor follows the bucket that holds the ``quantile``'s rank as
    counts change, so ``expected()`` — that bucket's midpoint, within 2.5 % of the sample
    quantile — is current after every observation. Old latencies age out by halves: the
    histogram counts the last ``window // 2`` to ``window`` observations, and every
    ``window // 2`` observations the older half is dropped. ``refresh`` is accepted for
    compatibility and ignored.

    >>> t = LatencyTracker(window=64, quantile=0.5)
    >>> for ms in (10, 20, 30, 40, 50):
    ...     t.observe(ms / 1000)
    >>> round(t.expected(), 3)  # the median, 30 ms, within 2.5 %
    0.03
    """

    def __init__(
        self, window: int = 256, quantile: float = 0.9, refresh: int | None = None
    ) -> None:
        if window < 2:
            raise ValueError("window must be >= 2")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError("quantile must be in [0, 1]")
        self._half = window // 2
        self._quantile = quantile
        self._current = [0] * _LATENCY_BUCKETS  # this half's counts
        self._counts = [0] * _LATENCY_BUCKETS  # the previous half's and this half's
        self._n_current = 0
        self._n = 0
        # The cursor: the bucket holding the rank-th smallest counted latency, and how
        # many are counted in the buckets below it.
        self._at = 0
        self._below = 0

    def observe(self, seconds: float) -> None:
        if self._n_current >= self._half:
            # The older half leaves: what this half counted is now everything counted.
            self._counts = self._current
            self._current = [0] * _LATENCY_BUCKETS
            self._n = self._n_current
            self._n_current = 0
            self._at = self._below = 0
        if seconds <= _LATENCY_LOW_S:
            i = 0
        else:
            i = min(int(math.log(seconds / _LATENCY_LOW_S) * _LATENCY_SCALE), _LATENCY_BUCKETS - 1)
        self._current[i] += 1
        self._counts[i] += 1
        self._n_current += 1
        self._n += 1
        if i < self._at:
            self._below += 1
        # Move the cursor to the bucket of the new rank: a step or two as a rule, never
        # more than the number of buckets.
        rank = max(1, math.ceil(self._quantile * self._n - 1e-9))
        counts, at, below = self._counts, self._at, self._below
        while below >= rank:
            at -= 1
            below -= counts[at]
        while below + counts[at] < rank:
            below += counts[at]
            at += 1
        self._at, self._below = at, below

    def expected(self) -> float:
        """Expected latency in seconds (0 until something was observed)."""
        return _LATENCY_MIDPOINTS[self._at] if self._n else 0.0


class Tier:
    """One tier: runs its adapter in its own thread pool and prices each call.

    ``threshold`` is ``None`` for the last tier (it always answers).
    """

    def __init__(
        self,
        name: str,
        adapter: ModelAdapter | AsyncModelAdapter,
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
        inline: bool = False,
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
        # Calls nobody waits for (shadow evaluation) run on one thread of their own at
        # the lowest CPU share, outside the batcher: see predict_background.
        self._background: ThreadPoolExecutor | None = None
        # Run the model on the event loop instead of the tier's thread (see _run_pool).
        self.inline = inline
        self.measured_call_s: float | None = None
        # Remote adapters are awaited on the event loop: no thread, no inline call.
        self.remote = is_async(adapter)
        # Priced by the tokens the upstream reports per call, not a fixed cost per call.
        self.metered = bool(getattr(adapter, "metered", False))
        self._back_off_until = -math.inf
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
            abandon_orphans=self.remote,
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
            "executor": "inline" if self.inline else "thread",
        }

    def predict_sync(self, texts: Sequence[str]) -> Probabilities:
        """Validated, temperature-scaled probabilities; raises ModelError on garbage."""
        if self.remote:
            raise ModelError(f"tier {self.name!r} is remote: use `await predict()`", tier=self.name)
        try:
            raw = self.adapter.predict_batch(texts)  # type: ignore[union-attr]
        except ModelError:
            raise
        except Exception as exc:  # a model's own failure becomes a typed ModelError
            raise ModelError(
                f"tier {self.name!r} failed: {type(exc).__name__}: {exc}", tier=self.name
            ) from exc
        probs = check_probabilities(raw, len(texts), len(self.labels), self.name)
        return apply_temperature(probs, self.temperature)

    async def predict(self, texts: Sequence[str], deadline: float | None = None) -> Scored:
        """Queue for the tier's micro-batcher; the model runs off the event loop.

        The caller bounds the wait (its deadline); ``latency`` tracks queue + model time.
        """
        start = self._clock()
        scored = await self.batcher.submit(texts, deadline)
        self.latency.observe(self._clock() - start)
        return scored

    async def predict_background(self, texts: Sequence[str], timeout_s: float) -> Scored:
        """A call nobody is waiting for (a shadow evaluation), at the lowest priority.

        It runs on a single thread of its own lowered to ``nice`` 19 (one call at a time),
        never in the batcher or on the event loop, so it takes a core only when served
        traffic leaves one free. Not counted in ``latency`` (that is served traffic).
        Remote tiers are awaited as usual (the upstream does the work); so are inline
        ones (too cheap to matter). Raises TimeoutError after ``timeout_s``.
        """
        if self.remote or self.inline:
            return await self.predict(texts, self._clock() + timeout_s)
        if self._background is None:
            self._background = ThreadPoolExecutor(
                1, thread_name_prefix=f"tier-{self.name}-background",
                initializer=lower_this_thread,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            probs = await loop.run_in_executor(self._background, self.predict_sync, list(texts))
        return Scored(probs)

    async def _run_pool(self, texts: list[str]) -> Scored:
        if self.remote:
            return await self._run_remote(texts)
        if self.inline:
            # Cheaper than the hop: a thread round trip (executor future, self-pipe
            # wake-up, GIL hand-over) costs as much as a small sklearn batch.
            return Scored(self.predict_sync(texts))
        loop = asyncio.get_running_loop()
        return Scored(await loop.run_in_executor(self._pool, self.predict_sync, texts))

    async def _run_remote(self, texts: list[str]) -> Scored:
        adapter: AsyncModelAdapter = self.adapter  # type: ignore[assignment]
        try:
            scored = await adapter.apredict_batch(texts)
        except ModelError:
            raise
        except Exception as exc:  # an adapter's own failure becomes a typed ModelError
            raise ModelError(
                f"tier {self.name!r} failed: {type(exc).__name__}: {exc}", tier=self.name
            ) from exc
        probs = check_probabilities(scored.probs, len(texts), len(self.labels), self.name)
        return Scored(apply_temperature(probs, self.temperature), scored.costs, scored.tokens)

    def raw_predict(self, batches: Sequence[Sequence[str]]) -> list[Scored]:
        """Raw (untempered) rows of each batch, unvalidated, for offline scoring.

        In-process adapters are called directly; a remote tier runs all batches on one
        private event loop and closes its connections after (this is for the CLI's
        `calibrate`/`evaluate`, never called from a running loop).
        """
        adapter = self.adapter
        if not isinstance(adapter, AsyncModelAdapter):
            return [Scored(np.asarray(adapter.predict_batch(b), dtype=np.float64)) for b in batches]
        remote = adapter

        async def run() -> list[Scored]:
            try:
                return [await remote.apredict_batch(b) for b in batches]
            finally:
                await remote.aclose()

        return asyncio.run(run())

    def worst_cost(self, texts: Sequence[str]) -> float:
        """The most a call of this tier on ``texts`` can cost (budget reservations)."""
        if not self.metered:
            return self.cost_per_call * len(texts)
        bound = getattr(self.adapter, "worst_cost", None)
        return sum(bound(t) for t in texts) if bound is not None else 0.0

    def measure_cost(self, sample: Sequence[str], cpu_second_price: float, calls: int = 20) -> None:
        """Derive ``cost_per_call`` from process CPU time of single calls (warm)."""
        if self.remote:
            return  # metered by tokens, or priced by config: the gateway's CPU is not the cost
        # Price the model itself: injected faults (chaos tests) must not hang start-up.
        adapter: ModelAdapter = getattr(self.adapter, "inner", self.adapter)  # type: ignore[arg-type]
        # An adapter whose calls memoise shared work prices itself (see MiniLMStackClassifier).
        call = getattr(adapter, "cost_probe", adapter.predict_batch)
        for text in sample:  # warm-up (first calls compile regexes, fill caches)
            call([text])
        t0 = time.process_time()
        per_call = []
        for i in range(calls):
            c0 = time.process_time()
            call([sample[i % len(sample)]])
            per_call.append(time.process_time() - c0)
        cpu = (time.process_time() - t0) / calls
        # The median CPU time of one call, not wall time: it is what running inline
        # costs the event loop, and it does not swing with whatever else the machine
        # is doing at start-up.
        self.measured_call_s = sorted(per_call)[len(per_call) // 2]
        if self.cost_derived:
            self.cost_per_call = cpu * cpu_second_price

    def backing_off(self, now: float) -> bool:
        """Has the upstream asked not to be called until a time still ahead?"""
        return now < self._back_off_until

    def back_off(self, until: float) -> None:
        """Skip this tier until ``until`` (clock time), as a 429/503 Retry-After asked."""
        self._back_off_until = max(self._back_off_until, until)

    async def start(self) -> None:
        """Check a remote upstream is ready (typed error if not); a no-op in process."""
        if not self.remote:
            return
        try:
            await self.adapter.start()  # type: ignore[union-attr]
        except TiergateError as exc:  # say which tier, not only which URL
            raise ConfigError(f"tier {self.name!r}: {exc.message}") from None

    async def aclose(self) -> None:
        """:meth:`close`, and release a remote adapter's connection pool."""
        if self.remote:
            await self.adapter.aclose()  # type: ignore[union-attr]
        self.close()

    def close(self) -> None:
        release = getattr(self.adapter, "release", None)
        if callable(release):  # let injected hangs end so the process can exit
            release()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)
