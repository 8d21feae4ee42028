"""One contract for every CacheStore, run against memory, a real Redis, and both layered;
plus what happens when Redis dies and comes back.

The Redis server is Debian's ``redis-server``, started here on a free loopback port
without persistence and stopped by PID. Tests skip only if it is not installed.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tiergate.cache import (
    CacheStore,
    ExactCache,
    LayeredStore,
    MemoryStore,
    PrometheusCacheMetrics,
    RedisStore,
)
from tiergate.testing import ManualClock, RedisServer, free_port
from tiergate.types import Result

pytestmark = pytest.mark.integration

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (apt-get install redis-server)"
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if REDIS is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis", "layered"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    s: CacheStore
    if request.param == "memory":
        s = MemoryStore(1000)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        redis = RedisStore(server.url, key_prefix=f"t{uuid.uuid4().hex}:".encode())
        s = redis if request.param == "redis" else LayeredStore(MemoryStore(100), redis)
    yield s
    await s.close()


async def test_get_set_delete(store: CacheStore) -> None:
    assert isinstance(store, CacheStore)
    assert await store.get(b"k") is None
    await store.set(b"k", b"\x00binary\xff")
    assert await store.get(b"k") == b"\x00binary\xff"
    await store.set(b"k", b"v2")
    assert await store.get(b"k") == b"v2"
    await store.delete(b"k")
    assert await store.get(b"k") is None
    await store.delete(b"never-set")


async def test_get_many_keeps_order_and_misses(store: CacheStore) -> None:
    await store.set(b"a", b"1")
    await store.set(b"c", b"3")
    assert await store.get_many([b"a", b"b", b"c", b"a"]) == [b"1", None, b"3", b"1"]
    assert await store.get_many([]) == []


async def test_set_many_writes_every_item(store: CacheStore) -> None:
    await store.set(b"b", b"old")
    await store.set_many([(b"a", b"1"), (b"b", b"2"), (b"c", b"\x00\xff")], ttl_s=3600)
    await store.set_many([])
    assert await store.get_many([b"a", b"b", b"c"]) == [b"1", b"2", b"\x00\xff"]


async def test_ttl_is_accepted(store: CacheStore) -> None:
    await store.set(b"t", b"v", ttl_s=3600)
    assert await store.get(b"t") == b"v"


async def test_exact_cache_round_trip(store: CacheStore) -> None:
    cache = ExactCache(store, "svc|fast=1|cal=1|cfg=1")
    result = Result("positive", 0.9, "fast", ("fast",), None, None, 1.0, 1e-6, "1", "1")
    assert await cache.put("a fine film", result)
    hit = await cache.get("a fine film")
    assert hit is not None and hit.cache == "exact" and hit.output == "positive"


@needs_redis
async def test_redis_expires_entries(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    store = RedisStore(redis_server.url, key_prefix=b"ttl:")
    await store.set(b"k", b"v", ttl_s=30)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert 0 < await client.pttl(b"ttl:k") <= 30_000
    finally:
        await client.aclose()
        await store.close()


@needs_redis
async def test_redis_down_serves_misses_then_reconnects() -> None:
    from prometheus_client import CollectorRegistry

    server = RedisServer(free_port())
    server.start()
    clock = ManualClock()
    registry = CollectorRegistry()
    store = RedisStore(
        server.url, clock=clock, backoff_s=1.0, max_backoff_s=8.0,
        metrics=PrometheusCacheMetrics(registry),
    )  # fmt: skip

    def sample(name: str, **labels: Any) -> float | None:
        return registry.get_sample_value(name, {"store": "redis", **labels})

    try:
        await store.set(b"k", b"v")
        assert await store.get(b"k") == b"v"
        server.stop()

        assert await store.get(b"k") is None  # no exception: a miss
        assert not store.available and store.errors == 1
        await store.set(b"k2", b"v")  # dropped, no network while backing off
        assert await store.get_many([b"k", b"k2"]) == [None, None]
        assert store.errors == 1
        assert sample("tiergate_cache_store_bypassed_total", op="set") == 1
        assert sample("tiergate_cache_store_up") == 0

        clock.advance(1.0)  # backoff over: one probe, still down -> backoff doubles
        assert await store.get(b"k") is None
        assert store.errors == 2
        clock.advance(1.0)
        assert await store.get(b"k") is None and store.errors == 2  # 2 s backoff not over

        server.start()  # same port, empty (no persistence)
        assert await store.get(b"k") is None and store.errors == 2  # still backing off
        clock.advance(1.0)
        await store.set(b"k", b"back")  # the probe succeeds
        assert store.available
        assert await store.get(b"k") == b"back"
        assert sample("tiergate_cache_store_up") == 1
        assert sample("tiergate_cache_store_errors_total", op="get") == 2
    finally:
        await store.close()
        server.stop()


@needs_redis
async def test_exact_cache_keeps_answering_while_redis_is_down() -> None:
    server = RedisServer(free_port())
    server.start()
    store = RedisStore(server.url, clock=ManualClock())
    cache = ExactCache(store, "ns")
    calls = 0

    async def compute() -> Result:
        nonlocal calls
        calls += 1
        return Result("positive", 0.9, "fast", ("fast",), None, None, 1.0, 1e-6, "1", "1")

    try:
        await cache.get_or_compute("x", compute)
        assert (await cache.get_or_compute("x", compute)).cache == "exact"
        server.stop()
        for _ in range(3):
            r = await cache.get_or_compute("x", compute)
            assert r.cache is None and r.output == "positive"
        assert calls == 4
    finally:
        await store.close()
        server.stop()


async def test_unreachable_redis_never_raises() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", clock=ManualClock())
    assert await store.get(b"k") is None
    await store.set(b"k", b"v")
    assert await store.get_many([b"a"]) == [None]
    await store.delete(b"k")
    assert not await store.ping()
    await store.close()
    fresh = RedisStore(f"redis://127.0.0.1:{free_port()}/0", clock=ManualClock())
    await fresh.set_many([(b"a", b"1"), (b"b", b"2")])  # the pipeline fails: dropped, no raise
    assert fresh.errors == 1 and not fresh.available
    await fresh.close()


@needs_redis
async def test_exhausted_pool_is_a_miss_but_not_an_outage(redis_server: RedisServer) -> None:
    import asyncio

    store = RedisStore(
        redis_server.url, max_connections=1, pool_timeout_s=0.01, socket_timeout_s=2.0,
        clock=ManualClock(),
    )  # fmt: skip
    try:
        # BLPOP holds the only connection for 0.3 s (real time: a real server).
        blocker = asyncio.create_task(store._client.blpop([b"nothing"], timeout=0.3))
        await asyncio.sleep(0.05)
        assert await store.get(b"k") is None
        assert store.available and store.errors == 1
        await blocker
        await store.set(b"k", b"v")
        assert await store.get(b"k") == b"v"
    finally:
        await store.close()
