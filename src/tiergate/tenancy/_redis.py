"""The Redis client that shared rate limits and budgets use (one per store)."""

from __future__ import annotations

import asyncio
from typing import Any


def shared_state_client(url: str, socket_timeout_s: float, max_connections: int) -> Any:
    """An asyncio Redis client on a pool of at most ``max_connections``.

    Callers hold one of as many slots (:func:`shared_state_slots`) around each use,
    so a burst of requests queues locally for a few connections instead of opening one
    each. Waiting for a slot has no timeout of its own: it is local contention, not a
    sign that Redis is down, and treating it as one (a bounded pool's wait timeout did)
    turned a shared limit into a per-process one under load, letting a burst through
    once per replica. Only Redis itself timing out (``socket_timeout_s``) or refusing
    counts as an outage; a slot's next holder then sees it and falls back at once. One
    immediate retry replaces a pooled connection that went stale while Redis restarted;
    more would only add latency to a request while Redis is down.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # (The retry goes to the pool's connections: a client given a pool ignores its own.)
    pool = aioredis.ConnectionPool.from_url(
        url, max_connections=max_connections,
        socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )  # fmt: skip
    return aioredis.Redis(connection_pool=pool)


def shared_state_slots(max_connections: int) -> asyncio.Semaphore:
    """The slots that bound a store's concurrent Redis calls to its pool's size."""
    return asyncio.Semaphore(max_connections)
