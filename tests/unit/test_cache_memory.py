"""MemoryStore specifics (TTL, LRU evictions) and the Prometheus metrics hook.

The behaviour every store shares is in tests/integration/test_cache_stores.py.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from tiergate.cache import LayeredStore, MemoryStore, PrometheusCacheMetrics
from tiergate.testing import ManualClock


async def test_entries_expire_on_the_injected_clock() -> None:
    clock = ManualClock()
    store = MemoryStore(10, default_ttl_s=60, clock=clock)
    await store.set(b"a", b"1")
    await store.set(b"b", b"2", ttl_s=5)
    await store.set(b"c", b"3", ttl_s=None)
    clock.advance(4.9)
    assert await store.get_many([b"a", b"b", b"c"]) == [b"1", b"2", b"3"]
    clock.advance(0.2)
    assert await store.get_many([b"a", b"b", b"c"]) == [b"1", None, b"3"]
    clock.advance(60)
    assert await store.get_many([b"a", b"b", b"c"]) == [None, None, None]


async def test_no_default_ttl_keeps_entries_until_evicted() -> None:
    clock = ManualClock()
    store = MemoryStore(10, default_ttl_s=None, clock=clock)
    await store.set(b"a", b"1")
    clock.advance(1e9)
    assert await store.get(b"a") == b"1"


async def test_least_recently_used_is_evicted_and_counted() -> None:
    registry = CollectorRegistry()
    store = MemoryStore(2, metrics=PrometheusCacheMetrics(registry))
    await store.set(b"a", b"1")
    await store.set(b"b", b"2")
    assert await store.get(b"a") == b"1"  # b is now least recently used
    await store.set(b"c", b"3")
    assert await store.get_many([b"a", b"b", b"c"]) == [b"1", None, b"3"]
    assert store.evictions == 1 and len(store) == 2
    assert registry.get_sample_value("tiergate_cache_evictions_total", {"store": "memory"}) == 1


async def test_layered_store_fills_the_near_layer() -> None:
    near, far = MemoryStore(10), MemoryStore(10)
    store = LayeredStore(near, far, near_ttl_s=5)
    await far.set(b"k", b"v")
    assert await near.get(b"k") is None
    assert await store.get(b"k") == b"v"
    assert await near.get(b"k") == b"v"
    await store.set(b"n", b"w")
    assert await far.get(b"n") == b"w" and await near.get(b"n") == b"w"


def test_prometheus_metric_names() -> None:
    registry = CollectorRegistry()
    m = PrometheusCacheMetrics(registry)
    m.lookup("exact", "hit", 0.0001)
    m.lookup("semantic", "miss", 0.002)
    m.store_error("redis", "get")
    m.store_bypass("redis", "get")
    m.store_up("redis", False)
    m.audit(True, 0.5, 0.9)
    m.threshold(0.93)
    m.entries("semantic", 3)
    m.stored("exact", True)
    text = generate_latest(registry).decode()
    for name in (
        'tiergate_cache_lookups_total{kind="exact",result="hit"} 1.0',
        'tiergate_cache_lookup_latency_seconds_count{kind="semantic"} 1.0',
        'tiergate_cache_store_errors_total{op="get",store="redis"} 1.0',
        'tiergate_cache_store_bypassed_total{op="get",store="redis"} 1.0',
        'tiergate_cache_store_up{store="redis"} 0.0',
        'tiergate_cache_semantic_audits_total{outcome="false_hit"} 1.0',
        "tiergate_cache_semantic_false_hit_rate 0.5",
        "tiergate_cache_semantic_false_hit_upper_bound 0.9",
        "tiergate_cache_semantic_threshold 0.93",
        'tiergate_cache_entries{kind="semantic"} 3.0',
        'tiergate_cache_stores_total{kind="exact",stored="yes"} 1.0',
    ):
        assert name in text, name


def test_prometheus_metrics_can_reuse_an_existing_lookup_counter() -> None:
    registry = CollectorRegistry()
    existing = Counter("tiergate_cache_lookups", "x", ["kind", "result"], registry=registry)
    m = PrometheusCacheMetrics(registry, lookups=existing)
    m.lookup("exact", "hit", 0.0)
    assert existing.labels("exact", "hit")._value.get() == 1
