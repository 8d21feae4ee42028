"""Per-key rate limits as token buckets: per process, or shared by replicas through Redis.

Each key may have two buckets: ``per_second`` (refilled at that rate, holding ``burst``)
and ``per_minute`` (refilled evenly, holding a minute's worth). A request takes one
token from each; if either is empty it is refused with the wait until both have one
(429 + ``Retry-After``), and neither bucket is charged.

:class:`LocalRateLimiter` keeps the buckets in this process: with N replicas behind a
load balancer, a key gets up to N times its limit. :class:`RedisRateLimiter` keeps them
in Redis and updates both in one Lua script per request (atomic, with Redis's own
clock, so replicas agree whatever their clocks say). When Redis cannot be reached it
falls back to per-process buckets (counted in
``tiergate_shared_state_fallback_total{what="rate_limit"}``, logged once per outage),
tries Redis again after a back-off, and resumes shared accounting when it answers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from tiergate.tenancy._redis import shared_state_client, shared_state_slots
from tiergate.tenancy.keys import RateLimit

__all__ = ["LocalRateLimiter", "RateLimiter", "RedisRateLimiter", "TokenBucket"]

log = logging.getLogger("tiergate.tenancy")


class RateLimiter(Protocol):
    async def acquire(self, key: str, limit: RateLimit) -> float:
        """0 if the request may go; else the seconds until it could."""
        ...


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second (clock passed in)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def level(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0 if it is now)."""
        missing = 1.0 - self.level(now)
        return 0.0 if missing <= 0 else missing / self.rate


def _buckets(limit: RateLimit) -> list[tuple[str, float, float]]:
    """(suffix, rate per second, capacity) of each bucket a limit defines."""
    out = []
    if limit.per_second is not None:
        out.append(("s", limit.per_second, limit.burst or max(1.0, limit.per_second)))
    if limit.per_minute is not None:
        out.append(("m", limit.per_minute / 60.0, max(1.0, limit.per_minute)))
    return out


class LocalRateLimiter:
    """Buckets in this process (O(1) per request; one entry per key and bucket)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    async def acquire(self, key: str, limit: RateLimit) -> float:
        return self.acquire_now(key, limit)

    def acquire_now(self, key: str, limit: RateLimit) -> float:
        now = self._clock()
        taken: list[TokenBucket] = []
        wait = 0.0
        for suffix, rate, capacity in _buckets(limit):
            b = self._buckets.get((key, suffix))
            if b is None or b.rate != rate or b.capacity != capacity:
                b = self._buckets[(key, suffix)] = TokenBucket(rate, capacity, now)
            wait = max(wait, b.wait(now))
            taken.append(b)
        if wait > 0:
            return wait
        for b in taken:
            b.tokens -= 1.0
        return 0.0


# KEYS: one hash per bucket. ARGV: n, then (rate per second, capacity) per bucket.
# Returns 0 (taken from every bucket) or the wait in microseconds (nothing taken).
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n = tonumber(ARGV[1])
local levels = {}
local wait = 0
for i = 1, n do
  local rate = tonumber(ARGV[2 * i])
  local cap = tonumber(ARGV[2 * i + 1])
  local b = redis.call('HMGET', KEYS[i], 'tokens', 'stamp')
  local tokens = tonumber(b[1]) or cap
  local stamp = tonumber(b[2]) or now
  if now > stamp then tokens = math.min(cap, tokens + (now - stamp) * rate) end
  levels[i] = tokens
  if tokens < 1 then wait = math.max(wait, (1 - tokens) / rate) end
end
for i = 1, n do
  local rate = tonumber(ARGV[2 * i])
  local cap = tonumber(ARGV[2 * i + 1])
  local tokens = levels[i]
  if wait == 0 then tokens = tokens - 1 end
  redis.call('HSET', KEYS[i], 'tokens', tokens, 'stamp', now)
  redis.call('EXPIRE', KEYS[i], math.ceil(cap / rate) + 60)
end
return math.ceil(wait * 1e6)
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every replica; per-process while Redis is down."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tiergate:rl:",
        socket_timeout_s: float = 0.25,
        max_connections: int = 16,
        backoff_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        from redis.exceptions import RedisError

        self.url = url
        self._prefix = prefix
        self._client: Any = shared_state_client(url, socket_timeout_s, max_connections)
        self._slots = shared_state_slots(max_connections)
        self._script = self._client.register_script(_LUA)
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._local = LocalRateLimiter(clock)
        self._clock = clock
        self._backoff_s = backoff_s
        self._down_until: float | None = None
        self._on_fallback = on_fallback
        self.fallbacks = 0

    def __repr__(self) -> str:
        return f"RedisRateLimiter({self.url!r}, shared={self.shared})"

    @property
    def shared(self) -> bool:
        """False while the limits fall back to this process's buckets."""
        return self._down_until is None

    async def acquire(self, key: str, limit: RateLimit) -> float:
        buckets = _buckets(limit)
        if not buckets:
            return 0.0
        async with self._slots:  # (checked after the wait: Redis may have gone meanwhile)
            return await self._acquire(key, limit, buckets)

    async def _acquire(
        self, key: str, limit: RateLimit, buckets: list[tuple[str, float, float]]
    ) -> float:
        if self._down_until is not None and self._clock() < self._down_until:
            return self._fallback(key, limit)
        keys = [f"{self._prefix}{key}:{suffix}" for suffix, _, _ in buckets]
        args: list[float] = [len(buckets)]
        for _, rate, capacity in buckets:
            args += [rate, capacity]
        try:
            wait_us = await self._script(keys=keys, args=args)
        except self._errors as exc:
            if self._down_until is None:
                log.warning("redis at %s unreachable (%s): rate limits per process until it "
                            "is back", self.url, type(exc).__name__)  # fmt: skip
            self._down_until = self._clock() + self._backoff_s
            return self._fallback(key, limit)
        if self._down_until is not None:
            log.warning("redis at %s is back: rate limits shared again", self.url)
            self._down_until = None
        return int(wait_us) / 1e6

    def _fallback(self, key: str, limit: RateLimit) -> float:
        self.fallbacks += 1
        if self._on_fallback is not None:
            self._on_fallback()
        return self._local.acquire_now(key, limit)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()


def retry_after_header(wait_s: float) -> int:
    """Whole seconds for ``Retry-After`` (at least 1)."""
    return max(1, math.ceil(wait_s))
