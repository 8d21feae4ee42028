"""The Redis client that shared rate limits and budgets use (one per store)."""

from __future__ import annotations

from typing import Any


def shared_state_client(url: str, socket_timeout_s: float, max_connections: int) -> Any:
    """An asyncio Redis client on a bounded pool that waits for a free connection.

    A burst of requests then queues for a few connections instead of opening one
    each: a hundred connects at once time out, and a timeout would turn a shared limit
    into a per-process one for nothing. One immediate retry replaces a pooled
    connection that went stale while Redis restarted; more would only add latency to a
    request while Redis is down.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # (The retry goes to the pool's connections: a client given a pool ignores its own.)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=4 * socket_timeout_s,
        socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )  # fmt: skip
    return aioredis.Redis(connection_pool=pool)
