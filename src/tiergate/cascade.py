"""The cascade policy: try tiers cheapest first; accept when confident enough.

Batch-oriented: the inputs still pending go to a tier as one batch, so a batch
request (or a micro-batch) costs one model call per tier, not one per input.
Deadline-aware: a tier is attempted only if its expected latency fits the remaining
budget; a tier that fails, times out or would overrun the deadline degrades the
answer to the best one computed so far, else the next tier, else the configured
default, and ``degraded`` says why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tiergate.errors import DeadlineExceededError, ModelError, OverloadError, UpstreamError
from tiergate.metrics import Metrics
from tiergate.models.base import Scored
from tiergate.tier import Tier
from tiergate.types import Result, TierAnswer

__all__ = ["Cascade", "FallbackPolicy"]

_RESERVE_S = 0.003


@dataclass(frozen=True)
class FallbackPolicy:
    """What the cascade answers when no tier gives the policy's answer."""

    default_output: str | None = None
    best_so_far_on_deadline: bool = True


class Cascade:
    """Ordered tiers plus the acceptance rule; returns one :class:`Result` per input."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        *,
        calibration_version: str | None,
        fallback: FallbackPolicy = FallbackPolicy(),
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not tiers:
            raise ValueError("a cascade needs at least one tier")
        for t in tiers[:-1]:
            if t.threshold is None:
                raise ValueError(f"tier {t.name!r} is not the last tier and has no threshold")
        self.tiers = tuple(tiers)
        self.calibration_version = calibration_version
        self.fallback = fallback
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        # Sees each tier call's confidences (the monitor's input-drift test).
        self.observer: Callable[[str, npt.NDArray[np.float64]], None] | None = None

    def __repr__(self) -> str:
        return f"Cascade({list(self.tiers)!r}, calibration={self.calibration_version!r})"

    async def run(
        self,
        texts: Sequence[str],
        deadline: float,
        *,
        start: float | None = None,
        max_tiers: int | None = None,
    ) -> list[Result]:
        """Answer ``texts``; ``deadline`` is an absolute time on ``clock``.

        ``max_tiers``: call at most the first that many tiers (what a key's budget still
        covers); an input none of them accepts is answered by the last one called, with
        ``degraded: "budget"``.
        """
        t_start = self.clock() if start is None else start
        n = len(texts)
        paths: list[list[str]] = [[] for _ in range(n)]
        costs = [0.0] * n
        best: list[TierAnswer | None] = [None] * n
        accepted: list[bool] = [False] * n
        reasons: list[str | None] = [None] * n
        pending = list(range(n))
        m = self.metrics
        # Stop waiting slightly before the deadline so the answer leaves in time.
        reserve = min(_RESERVE_S, 0.1 * max(deadline - t_start, 0.0))

        for i, tier in enumerate(self.tiers):
            if not pending:
                break
            if max_tiers is not None and i >= max_tiers:
                for j in pending:
                    reasons[j] = "budget"
                break
            remaining = deadline - self.clock()
            if remaining <= reserve or tier.latency.expected() > remaining:
                for j in pending:
                    reasons[j] = "deadline"
                if m:
                    m.tier_calls_by(tier.name, "skipped").inc(len(pending))
                break
            if tier.backing_off(self.clock()):
                # The upstream asked for a pause (429/503 + Retry-After): honour it.
                pending = self._fail(
                    pending, best, reasons, f"rate_limited:{tier.name}", tier, "rate_limited"
                )
                continue
            if not tier.breaker.allow():
                pending = self._fail(
                    pending, best, reasons, f"circuit_open:{tier.name}", tier, "circuit_open"
                )
                continue
            batch = [texts[j] for j in pending]
            charge = 0.0 if tier.metered else tier.cost_per_call  # metered: after the call
            for j in pending:
                paths[j].append(tier.name)
                costs[j] += charge
            if m and charge:
                m.cost_by(tier.name).inc(charge * len(pending))
            t0 = self.clock()
            timeout = min(tier.timeout_s, remaining - reserve)
            try:
                scored = await self._call(tier, batch, deadline, timeout)
            except TimeoutError:
                reason = f"tier_timeout:{tier.name}" if timeout >= tier.timeout_s else "deadline"
                pending = self._fail(pending, best, reasons, reason, tier, "timeout")
                if reason == "deadline":
                    break
                continue
            except DeadlineExceededError:
                # Dropped from the tier's queue: its deadline passed while waiting.
                pending = self._fail(pending, best, reasons, "deadline", tier, "timeout")
                break
            except OverloadError:
                pending = self._fail(pending, best, reasons, "overload", tier, "shed")
                continue
            except UpstreamError as exc:
                if exc.retry_after_s is not None:
                    tier.back_off(self.clock() + exc.retry_after_s)
                    reason, outcome = f"rate_limited:{tier.name}", "rate_limited"
                else:
                    reason, outcome = f"tier_error:{tier.name}", "error"
                pending = self._fail(pending, best, reasons, reason, tier, outcome)
                continue
            except ModelError:
                pending = self._fail(
                    pending, best, reasons, f"tier_error:{tier.name}", tier, "error"
                )
                continue
            elapsed = self.clock() - t0
            probs = scored.probs
            metered = scored.costs
            if metered is not None:  # token-priced: what the upstream says it used
                for row, j in enumerate(pending):
                    costs[j] += float(metered[row])
            if m:
                m.tier_latency_by(tier.name).observe(elapsed)
                if metered is not None:
                    m.cost_by(tier.name).inc(float(metered.sum()))
                if scored.tokens is not None:
                    used = scored.tokens.sum(axis=0)
                    m.tokens_by(tier.name, "prompt").inc(int(used[0]))
                    m.tokens_by(tier.name, "completion").inc(int(used[1]))
            idx = probs.argmax(axis=1)
            conf = probs[np.arange(len(pending)), idx]
            if self.observer is not None:
                self.observer(tier.name, conf)
            last = i == len(self.tiers) - 1
            thr = tier.threshold
            per_item_ms = elapsed * 1000.0
            still: list[int] = []
            for row, j in enumerate(pending):
                c = float(conf[row])
                best[j] = TierAnswer(
                    tier.name, tier.labels[int(idx[row])], c,
                    tier.cost_per_call if metered is None else float(metered[row]),
                    per_item_ms, tier.version,
                )  # fmt: skip
                if last or (thr is not None and c >= thr):
                    accepted[j] = True
                else:
                    still.append(j)
            if m:
                m.tier_calls_by(tier.name, "accepted").inc(len(pending) - len(still))
                if still and not last:
                    m.tier_calls_by(tier.name, "escalated").inc(len(still))
                    m.escalations_by(tier.name, self.tiers[i + 1].name).inc(len(still))
            pending = still

        now = self.clock()
        latency_ms = (now - t_start) * 1000.0
        return [
            self._result(best[j], accepted[j], reasons[j], tuple(paths[j]), costs[j], latency_ms)
            for j in range(n)
        ]

    async def _call(self, tier: Tier, batch: list[str], deadline: float, timeout: float) -> Scored:
        # One tier call with retries of model errors (never of timeouts: a slow tier
        # retried is a slower tier), bounded by attempts, the deadline and the budget.
        # A remote tier's UpstreamError says itself whether it is worth a retry, whether
        # it counts against the breaker, and whether the upstream asked for a pause.
        tier.retry_budget.on_attempt()
        retry = 0
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for runs the call in a task of its
                # own, one more event-loop hop per tier call for the same cancellation.
                async with asyncio.timeout(timeout):
                    scored = await tier.predict(batch, deadline)
            except TimeoutError:
                tier.breaker.record(False)
                raise
            except UpstreamError as exc:
                if exc.unhealthy:
                    tier.breaker.record(False)
                else:
                    tier.breaker.cancel()  # about this request, not the tier's health
                if not exc.retryable or exc.retry_after_s is not None:
                    raise
                if not await self._may_retry(tier, retry, deadline):
                    raise
                retry += 1
                timeout = min(timeout, max(deadline - self.clock(), 0.0))
                continue
            except ModelError:
                tier.breaker.record(False)
                if not await self._may_retry(tier, retry, deadline):
                    raise
                retry += 1
                timeout = min(timeout, max(deadline - self.clock(), 0.0))
                continue
            except BaseException:
                tier.breaker.cancel()  # shed, expired in queue or cancelled: no verdict
                raise
            tier.breaker.record(True)
            return scored

    async def _may_retry(self, tier: Tier, retry: int, deadline: float) -> bool:
        """Check the retry limits and, if one more attempt is allowed, back off first."""
        left = deadline - self.clock()
        if (
            retry >= tier.max_retries
            or left <= tier.latency.expected()
            or not tier.breaker.allow()
            or not tier.retry_budget.try_retry()
        ):
            return False
        if self.metrics:
            self.metrics.retries_by(tier.name).inc()
        await self.sleep(min(tier.backoff.delay(retry + 1), max(left, 0.0)))
        return True

    def _fail(
        self,
        pending: list[int],
        best: list[TierAnswer | None],
        reasons: list[str | None],
        reason: str,
        tier: Tier,
        outcome: str,
    ) -> list[int]:
        # Inputs with an answer from a lower tier stop here (answered degraded);
        # those without one go on to the next tier.
        if self.metrics:
            self.metrics.tier_calls_by(tier.name, outcome).inc(len(pending))
        for j in pending:
            reasons[j] = reason
        return [j for j in pending if best[j] is None]

    def _result(
        self,
        answer: TierAnswer | None,
        accepted: bool,
        reason: str | None,
        path: tuple[str, ...],
        cost: float,
        latency_ms: float,
    ) -> Result:
        if answer is not None:
            return Result(
                output=answer.output,
                confidence=answer.confidence,
                tier=answer.tier,
                path=path,
                cache=None,
                degraded=reason if (reason or not accepted) else None,
                latency_ms=latency_ms,
                cost=cost,
                model_version=answer.model_version,
                calibration_version=self.calibration_version,
            )
        fallback = self.fallback.default_output
        return Result(
            output=fallback,
            confidence=None,
            tier=None,
            path=path,
            cache=None,
            degraded=reason or "no_tier",
            latency_ms=latency_ms,
            cost=cost,
            model_version=None,
            calibration_version=self.calibration_version,
            extra={} if fallback is not None else {"failed": True},
        )
