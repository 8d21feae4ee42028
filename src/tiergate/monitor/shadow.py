"""Shadow evaluation: re-answer a sample of accepted answers with the last tier.

Off the request's critical path: :meth:`Shadow.offer` is O(1) (a random draw, two token
buckets, a counter) and, when the draw selects the answer, starts a background task;
the response has already been decided and does not wait. The task asks the last tier
(through its own micro-batcher, so it batches with real traffic) and reports whether it
agrees. Three caps bound what shadowing may cost: a share of accepted answers, calls per
second, and spend per hour; and at most ``max_inflight`` shadow calls run at once, so a
slow last tier sheds shadow work rather than queueing it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from tiergate.config import ShadowConfig
from tiergate.errors import TiergateError
from tiergate.tenancy.ratelimit import TokenBucket
from tiergate.tier import Tier

__all__ = ["Shadow", "ShadowVerdict"]

log = logging.getLogger("tiergate.monitor")
_TIMEOUT_S = 10.0

# (tier that answered, its label, the last tier's label, the input, shadow cost)
ShadowVerdict = Callable[[str, str, str, str, float], None]


class Shadow:
    """Samples accepted answers and re-answers them with ``last`` in the background."""

    def __init__(
        self,
        config: ShadowConfig,
        last: Tier,
        on_verdict: ShadowVerdict,
        *,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.last = last
        self.on_verdict = on_verdict
        self._clock = clock
        self._draw = draw
        now = clock()
        self._calls = TokenBucket(config.max_per_s, max(1.0, config.max_per_s), now)
        cap = config.max_cost_per_hour
        self._spend = None if cap is None else TokenBucket(cap / 3600.0, cap, now)
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.cost = 0.0
        self.dropped = {"rate_cap": 0, "cost_cap": 0, "busy": 0, "failed": 0}

    def __repr__(self) -> str:
        c = self.config
        return f"Shadow(rate={c.rate}, max_per_s={c.max_per_s}, last={self.last.name!r})"

    @property
    def enabled(self) -> bool:
        return self.config.rate > 0

    def offer(self, text: str, tier: str, output: str) -> bool:
        """Maybe shadow one accepted answer; True if a shadow call was started."""
        if self._draw() >= self.config.rate:
            return False
        if len(self._tasks) >= self.config.max_inflight:
            self.dropped["busy"] += 1
            return False
        now = self._clock()
        if self._calls.level(now) < 1.0:
            self.dropped["rate_cap"] += 1
            return False
        price = self.last.cost_per_call
        if self._spend is not None and self._spend.level(now) < price:
            self.dropped["cost_cap"] += 1
            return False
        self._calls.tokens -= 1.0
        if self._spend is not None:
            self._spend.tokens -= price
        self.sent += 1
        task = asyncio.ensure_future(self._run(text, tier, output))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, text: str, tier: str, output: str) -> None:
        last = self.last
        try:
            scored = await last.predict_background([text], _TIMEOUT_S)
        except (TiergateError, TimeoutError) as exc:
            self.dropped["failed"] += 1
            log.debug("shadow call to %r failed: %s", last.name, exc)
            return
        cost = float(scored.costs[0]) if scored.costs is not None else last.cost_per_call
        self.cost += cost
        label = last.labels[int(scored.probs[0].argmax())]
        self.on_verdict(tier, output, label, text, cost)

    def describe(self) -> dict[str, Any]:
        return {"rate": self.config.rate, "max_per_s": self.config.max_per_s,
                "max_cost_per_hour": self.config.max_cost_per_hour, "sent": self.sent,
                "inflight": len(self._tasks), "dropped": dict(self.dropped),
                "cost": self.cost}  # fmt: skip

    async def drain(self) -> None:
        """Wait for the shadow calls in flight (tests; shutdown cancels them instead)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
