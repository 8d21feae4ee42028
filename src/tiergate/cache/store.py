"""Key-value stores behind one protocol: in process (LRU + TTL), Redis, or both layered.

Stores hold opaque ``bytes`` under ``bytes`` keys and never raise on an unreachable
backend: a cache that is down is a cache that misses. Values are immutable per key
(keys are content hashes that include every model and calibration version), which is
what makes an in-process layer in front of a shared Redis safe.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from tiergate.cache.metrics import CacheMetrics, NullCacheMetrics
from tiergate.errors import ConfigError

__all__ = ["CacheStore", "LayeredStore", "MemoryStore", "RedisStore"]

_log = logging.getLogger("tiergate.cache")
_T = TypeVar("_T")


@runtime_checkable
class CacheStore(Protocol):
    """Async bytes → bytes store. Misses and backend failures both return ``None``.

    ``ttl_s=None`` in :meth:`set` means the store's default TTL.
    """

    async def get(self, key: bytes) -> bytes | None: ...

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    async def set(self, key: bytes, value: bytes, ttl_s: float | None = None) -> None: ...

    async def set_many(
        self, items: Sequence[tuple[bytes, bytes]], ttl_s: float | None = None
    ) -> None: ...

    async def delete(self, key: bytes) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process LRU with a per-entry TTL; O(1) per operation; counts evictions.

    An ``OrderedDict`` (C-implemented links, no per-entry Python node objects) keeps
    recency; expiry is checked when an entry is read, and capacity bounds what expired
    entries can hold. Entries are ``(bytes, float)`` tuples, which the garbage collector
    stops tracking after their first collection, so a full cache adds nothing to GC
    pauses (a node-per-entry LRU adds one tracked object per entry).

    >>> store = MemoryStore(max_items=1000, default_ttl_s=3600)
    """

    def __init__(
        self,
        max_items: int = 100_000,
        *,
        default_ttl_s: float | None = 3600.0,
        name: str = "memory",
        clock: Callable[[], float] = time.monotonic,
        metrics: CacheMetrics | None = None,
    ) -> None:
        if max_items < 1:
            raise ConfigError(f"max_items must be >= 1, got {max_items}", max_items=max_items)
        self.name = name
        self.default_ttl_s = default_ttl_s
        self.max_items = max_items
        self.evictions = 0
        self._metrics = metrics or NullCacheMetrics()
        self._clock = clock
        self._data: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"MemoryStore(max_items={self.max_items}, items={len(self._data)})"

    def __len__(self) -> int:
        return len(self._data)

    def peek(self, key: bytes) -> bytes | None:
        """:meth:`get` without a coroutine (the service's inline cache-hit path)."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry[0]

    async def get(self, key: bytes) -> bytes | None:
        return self.peek(key)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self.peek(k) for k in keys]

    def put(self, key: bytes, value: bytes, ttl_s: float | None = None) -> None:
        """:meth:`set` without a coroutine."""
        ttl = ttl_s if ttl_s is not None else self.default_ttl_s
        now = self._clock()
        data = self._data
        data[key] = (value, math.inf if ttl is None else now + ttl)
        data.move_to_end(key)
        if len(data) > self.max_items:
            _, (_, expires) = data.popitem(last=False)
            if expires > now:  # an expired entry making room is not a capacity eviction
                self.evictions += 1
                self._metrics.eviction(self.name, 1)

    async def set(self, key: bytes, value: bytes, ttl_s: float | None = None) -> None:
        self.put(key, value, ttl_s)

    async def set_many(
        self, items: Sequence[tuple[bytes, bytes]], ttl_s: float | None = None
    ) -> None:
        for key, value in items:
            self.put(key, value, ttl_s)

    async def delete(self, key: bytes) -> None:
        self._data.pop(key, None)

    async def close(self) -> None:
        self._data.clear()


class LayeredStore:
    """A small fast store (usually :class:`MemoryStore`) in front of a shared one.

    Reads try ``near`` first and fill it from ``far``; writes go to both. ``delete``
    only reaches this replica's ``near`` layer and the shared ``far`` one.
    """

    def __init__(self, near: CacheStore, far: CacheStore, *, near_ttl_s: float = 60.0) -> None:
        self.near = near
        self.far = far
        self.near_ttl_s = near_ttl_s

    def _ttl(self, ttl_s: float | None) -> float:
        return self.near_ttl_s if ttl_s is None else min(ttl_s, self.near_ttl_s)

    async def get(self, key: bytes) -> bytes | None:
        (value,) = await self.get_many([key])
        return value

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        out = await self.near.get_many(keys)
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            far = await self.far.get_many([keys[i] for i in missing])
            for i, value in zip(missing, far, strict=True):
                if value is not None:
                    out[i] = value
                    await self.near.set(keys[i], value, self.near_ttl_s)
        return out

    async def set(self, key: bytes, value: bytes, ttl_s: float | None = None) -> None:
        await self.near.set(key, value, self._ttl(ttl_s))
        await self.far.set(key, value, ttl_s)

    async def set_many(
        self, items: Sequence[tuple[bytes, bytes]], ttl_s: float | None = None
    ) -> None:
        await self.near.set_many(items, self._ttl(ttl_s))
        await self.far.set_many(items, ttl_s)

    async def delete(self, key: bytes) -> None:
        await self.near.delete(key)
        await self.far.delete(key)

    async def close(self) -> None:
        await self.near.close()
        await self.far.close()


class RedisStore:
    """A shared store on Redis (redis-py asyncio) that degrades to "always miss".

    Uses a ``BlockingConnectionPool`` (waits up to ``pool_timeout_s`` for a connection
    instead of failing under bursts) and short socket timeouts. On a connection error or
    timeout the store turns *unavailable*: calls return misses and drop writes without
    touching the network, until a backoff (doubling from ``backoff_s`` to
    ``max_backoff_s``) has passed; then one call probes, and success makes it available
    again. Nothing here raises to the caller; failures count in ``metrics``.

    >>> store = RedisStore("redis://127.0.0.1:6379/0", key_prefix=b"reviews:")
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: bytes = b"tiergate:",
        default_ttl_s: float | None = 3600.0,
        max_connections: int = 64,
        pool_timeout_s: float = 0.05,
        socket_timeout_s: float = 0.1,
        connect_timeout_s: float = 0.1,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        name: str = "redis",
        clock: Callable[[], float] = time.monotonic,
        metrics: CacheMetrics | None = None,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import RedisError
            from redis.exceptions import TimeoutError as RedisTimeoutError
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "the Redis cache needs redis-py: pip install 'tiergate[redis]'"
            ) from exc
        self.name = name
        self.url = url
        self.key_prefix = key_prefix
        self.default_ttl_s = default_ttl_s
        self.errors = 0
        self._metrics = metrics or NullCacheMetrics()
        self._clock = clock
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._current_backoff = 0.0
        self._down_until: float | None = None
        self._probing = False
        # One immediate retry on a connection error replaces a pooled connection that
        # went stale while Redis restarted; more retries would only add latency.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._client = aioredis.Redis(connection_pool=self._pool)
        self._down_errors: tuple[type[BaseException], ...] = (
            RedisConnectionError, RedisTimeoutError, OSError,
        )  # fmt: skip
        self._redis_error: type[BaseException] = RedisError
        self._metrics.store_up(name, True)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, available={self.available})"

    @property
    def available(self) -> bool:
        """False while the backoff after a connection failure runs."""
        return self._down_until is None

    async def _run(
        self, op: str, call: Callable[[Any], Awaitable[_T]], default: _T, *, force: bool = False
    ) -> _T:
        probe = False
        if self._down_until is not None and not force:
            if self._probing or self._clock() < self._down_until:
                self._metrics.store_bypass(self.name, op)
                return default
            self._probing = probe = True
        try:
            out = await call(self._client)
        except self._down_errors as exc:
            if isinstance(exc.__cause__, TimeoutError) and "No connection available" in str(exc):
                # The pool stayed exhausted for pool_timeout_s: a local burst, not an outage.
                self.errors += 1
                self._metrics.store_error(self.name, "pool_timeout")
                return default
            await self._trip(op, exc)
            return default
        except self._redis_error as exc:  # a server-side error (OOM, READONLY): not an outage
            self.errors += 1
            self._metrics.store_error(self.name, op)
            _log.warning("redis %s failed: %s", op, exc)
            return default
        finally:
            if probe:
                self._probing = False
        if self._down_until is not None:
            _log.warning("redis at %s is reachable again; cache re-enabled", self.url)
            self._down_until = None
            self._current_backoff = 0.0
            self._metrics.store_up(self.name, True)
        return out

    async def _trip(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        self._metrics.store_error(self.name, op)
        first = self._down_until is None
        self._current_backoff = (
            self._backoff_s if first else min(self._current_backoff * 2, self._max_backoff_s)
        )
        self._down_until = self._clock() + self._current_backoff
        self._metrics.store_up(self.name, False)
        if first:
            _log.warning(
                "redis at %s unavailable (%s: %s); serving without it, retrying in %.1fs",
                self.url, type(exc).__name__, exc, self._current_backoff,
            )  # fmt: skip
        try:  # drop idle connections to the dead server
            await self._pool.disconnect(inuse_connections=False)
        except Exception as close_exc:  # already broken; nothing more to do
            _log.debug("closing redis connections failed: %s", close_exc)

    def _k(self, key: bytes) -> bytes:
        return self.key_prefix + key

    async def get(self, key: bytes) -> bytes | None:
        return await self._run("get", lambda c: c.get(self._k(key)), None)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        default: list[bytes | None] = [None] * len(keys)
        out = await self._run("get_many", lambda c: c.mget([self._k(k) for k in keys]), default)
        return list(out)

    async def set(self, key: bytes, value: bytes, ttl_s: float | None = None) -> None:
        ttl = ttl_s if ttl_s is not None else self.default_ttl_s
        px = None if ttl is None else max(1, int(ttl * 1000))
        await self._run("set", lambda c: c.set(self._k(key), value, px=px), None)

    async def set_many(
        self, items: Sequence[tuple[bytes, bytes]], ttl_s: float | None = None
    ) -> None:
        """All items in one round trip (a non-transactional pipeline)."""
        if not items:
            return
        ttl = ttl_s if ttl_s is not None else self.default_ttl_s
        px = None if ttl is None else max(1, int(ttl * 1000))

        async def pipelined(client: Any) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(self._k(key), value, px=px)
                await pipe.execute()

        await self._run("set_many", pipelined, None)

    async def delete(self, key: bytes) -> None:
        await self._run("delete", lambda c: c.delete(self._k(key)), None)

    async def ping(self) -> bool:
        """True if Redis answers now (also ends the unavailable state early)."""
        return bool(await self._run("ping", lambda c: c.ping(), False, force=True))

    async def close(self) -> None:
        try:
            await self._client.aclose()
            await self._pool.disconnect()
        except self._down_errors as exc:
            _log.debug("closing redis failed: %s", exc)
