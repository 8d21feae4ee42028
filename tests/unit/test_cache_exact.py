"""Exact cache: versioned keys, what may be stored, provenance, single-flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tiergate.cache import ExactCache, MemoryStore, make_namespace, normalise_text
from tiergate.testing import ManualClock
from tiergate.types import Result

NS1 = make_namespace("svc", {"fast": "f1", "accurate": "a1"}, "cal-1", "cfg-1")


def answer(output: str | None = "positive", **kw: Any) -> Result:
    fields: dict[str, Any] = {
        "output": output, "confidence": 0.93, "tier": "accurate", "path": ("fast", "accurate"),
        "cache": None, "degraded": None, "latency_ms": 12.5, "cost": 0.004,
        "model_version": "a1", "calibration_version": "cal-1", "extra": {},
    }  # fmt: skip
    fields.update(kw)
    return Result(**fields)


class Recorder:
    """A CacheMetrics that remembers lookups (the real one is tested separately)."""

    def __init__(self) -> None:
        self.lookups: list[tuple[str, str, float]] = []
        self.stores: list[bool] = []

    def lookup(self, kind: str, result: str, seconds: float) -> None:
        self.lookups.append((kind, result, seconds))

    def stored(self, kind: str, stored: bool) -> None:
        self.stores.append(stored)

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def test_namespace_names_every_version() -> None:
    assert NS1 == "svc|fast=f1,accurate=a1|cal=cal-1|cfg=cfg-1"
    assert make_namespace("svc", {"fast": "f1"}, None) == "svc|fast=f1|cal=none|cfg="


def test_key_depends_on_normalised_text_and_namespace() -> None:
    cache = ExactCache(MemoryStore(), NS1)
    assert cache.key("a  fine\u200b film\n") == cache.key("a fine film")
    assert cache.key("Cafe\u0301") == cache.key("Café")
    assert cache.key("A fine film") != cache.key("a fine film")  # no case folding
    other = ExactCache(MemoryStore(), make_namespace("svc", {"fast": "f2"}, "cal-1"))
    assert other.key("a fine film") != cache.key("a fine film")
    assert normalise_text(normalise_text(" x\ty ")) == "x y"


async def test_new_model_or_calibration_never_serves_old_entry() -> None:
    store = MemoryStore()
    old = ExactCache(store, NS1)
    assert await old.put("a fine film", answer())
    assert await old.get("a fine film") is not None
    for ns in (
        make_namespace("svc", {"fast": "f1", "accurate": "a2"}, "cal-1", "cfg-1"),  # new model
        make_namespace(
            "svc", {"fast": "f1", "accurate": "a1"}, "cal-2", "cfg-1"
        ),  # new calibration
        make_namespace("svc", {"fast": "f1", "accurate": "a1"}, "cal-1", "cfg-2"),  # new config
    ):
        assert await ExactCache(store, ns).get("a fine film") is None


async def test_hit_keeps_provenance_costs_nothing_and_reports_lookup_latency() -> None:
    clock = ManualClock()
    store = MemoryStore()
    cache = ExactCache(store, NS1, clock=clock)
    await cache.put("a fine film", answer(extra={"note": 1}))

    real_get = store.get

    async def slow_get(key: bytes) -> bytes | None:
        clock.advance(0.002)
        return await real_get(key)

    store.get = slow_get  # type: ignore[method-assign]

    async def never() -> Result:
        raise AssertionError("must not compute on a hit")

    hit = await cache.get_or_compute("a fine film", never)
    assert hit.cache == "exact"
    assert (hit.output, hit.tier, hit.path, hit.degraded) == (
        "positive", "accurate", ("fast", "accurate"), None,
    )  # fmt: skip
    assert hit.cost == 0.0
    assert hit.latency_ms == pytest.approx(2.0)
    assert hit.extra["note"] == 1
    assert hit.extra["cached_from"] == {
        "tier": "accurate", "path": ["fast", "accurate"], "model_version": "a1",
        "calibration_version": "cal-1", "cost": 0.004,
    }  # fmt: skip
    d = hit.to_dict()
    assert d["cache"] == "exact" and d["cached_from"]["tier"] == "accurate"


@pytest.mark.parametrize(
    "result",
    [
        answer(degraded="deadline"),
        answer(degraded="tier_timeout:accurate", tier="fast", path=("fast", "accurate")),
        answer(output=None, degraded="circuit_open:accurate"),
        answer(output=None),
        answer(cache="semantic"),  # a semantic hit must not become an "exact" answer
        answer(extra={"bad": object()}),  # not JSON: skipped, not a crash
    ],
)
async def test_only_fresh_policy_answers_are_stored(result: Result) -> None:
    metrics = Recorder()
    cache = ExactCache(MemoryStore(), NS1, metrics=metrics)
    calls = 0

    async def compute() -> Result:
        nonlocal calls
        calls += 1
        return result

    assert await cache.get_or_compute("x", compute) is result
    assert await cache.get_or_compute("x", compute) is result
    assert calls == 2
    assert metrics.stores == [False, False]


async def test_single_flight_runs_one_computation_for_identical_requests() -> None:
    metrics = Recorder()
    cache = ExactCache(MemoryStore(), NS1, metrics=metrics)
    release = asyncio.Event()
    calls = 0

    async def compute() -> Result:
        nonlocal calls
        calls += 1
        await release.wait()
        return answer()

    tasks = [asyncio.create_task(cache.get_or_compute("a  fine film", compute)) for _ in range(20)]
    tasks += [asyncio.create_task(cache.get_or_compute("a fine film", compute)) for _ in range(5)]
    await asyncio.sleep(0)  # let every task reach the flight (no real time passes)
    assert cache.in_flight == 1
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert all(r.output == "positive" for r in results)
    assert sorted({r for _, r, _ in metrics.lookups}) == ["coalesced", "miss"]
    assert cache.in_flight == 0
    hit = await cache.get_or_compute("a fine film", compute)
    assert hit.cache == "exact" and calls == 1


async def test_single_flight_shares_the_error_and_then_forgets_it() -> None:
    cache = ExactCache(MemoryStore(), NS1)
    release = asyncio.Event()
    calls = 0

    async def failing() -> Result:
        nonlocal calls
        calls += 1
        await release.wait()
        raise ValueError("model down")

    tasks = [asyncio.create_task(cache.get_or_compute("x", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1 and all(isinstance(o, ValueError) for o in outcomes)

    async def ok() -> Result:
        return answer()

    assert (await cache.get_or_compute("x", ok)).cache is None  # no negative caching


async def test_waiter_takes_over_when_the_leader_is_cancelled() -> None:
    cache = ExactCache(MemoryStore(), NS1)
    hang = asyncio.Event()

    async def slow() -> Result:
        await hang.wait()
        return answer()

    async def fast() -> Result:
        return answer(output="negative")

    leader = asyncio.create_task(cache.get_or_compute("x", slow))
    await asyncio.sleep(0)
    follower = asyncio.create_task(cache.get_or_compute("x", fast))
    await asyncio.sleep(0)
    leader.cancel()
    assert (await follower).output == "negative"
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_batch_lookup_and_store() -> None:
    metrics = Recorder()
    cache = ExactCache(MemoryStore(), NS1, metrics=metrics)
    texts = ["one", "two", "three"]
    assert await cache.put_many(texts, [answer(), answer(degraded="deadline"), answer()]) == 2
    hits = await cache.get_many([*texts, "four"])
    assert [h is not None for h in hits] == [True, False, True, False]
    assert [r for _, r, _ in metrics.lookups] == ["hit", "miss", "hit", "miss"]


async def test_malformed_entry_is_a_miss() -> None:
    store = MemoryStore()
    cache = ExactCache(store, NS1)
    await store.set(cache.key("x"), b"{not json")
    assert await cache.get("x") is None
    await store.set(cache.key("x"), b'{"f": 99}')
    assert await cache.get("x") is None
