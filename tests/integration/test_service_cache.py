"""Caches wired into the service, over real HTTP; Redis is a real redis-server.

Tiers are the deterministic `keyword_sentiment` callable (the subject is the cache).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tiergate.api import create_app
from tiergate.config import load_config
from tiergate.loadgen import run_load, summarize
from tiergate.service import Service
from tiergate.testing import RedisServer, free_port, serve_in_thread

pytestmark = pytest.mark.integration

CONFIG = """
service: cached
tiers:
  - name: fast
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}}
    cost_per_call: 0.000001
    threshold: {threshold}
  - name: accurate
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}}
    cost_per_call: 0.0001
cache: {{exact: {{backend: {backend}, redis_url: "{redis_url}"}}}}
"""


def service(
    tmp: Path, *, backend: str = "memory", redis_url: str = "", threshold: float = 0.9
) -> Service:
    path = tmp / f"config-{backend}-{threshold}.yaml"
    path.write_text(CONFIG.format(backend=backend, redis_url=redis_url, threshold=threshold))
    return Service.from_config(load_config(path))


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with serve_in_thread(create_app(service(tmp_path))) as base:
        yield base


def test_repeat_is_an_exact_hit_with_provenance(url: str) -> None:
    first = httpx.post(url + "/v1/predict", json={"input": "a film about a dog"}).json()
    assert first["cache"] is None and first["path"] == ["fast", "accurate"]
    second = httpx.post(url + "/v1/predict", json={"input": "  a film   about a dog "}).json()
    assert second["cache"] == "exact"
    assert (second["output"], second["tier"], second["path"]) == (
        first["output"], first["tier"], first["path"],
    )  # fmt: skip
    assert second["cost"] == 0.0
    assert second["cached_from"]["tier"] == "accurate"
    assert second["calibration_version"] == first["calibration_version"]
    batch = httpx.post(
        url + "/v1/predict/batch", json={"inputs": ["a film about a dog", "new one"]}
    )
    assert [r["cache"] for r in batch.json()["results"]] == ["exact", None]
    metrics = httpx.get(url + "/metrics").text
    assert 'tiergate_requests_total{outcome="cached",tier="accurate"}' in metrics


def test_degraded_answers_are_not_cached(tmp_path: Path) -> None:
    svc = service(tmp_path)
    svc.tiers[1].breaker.trip()  # the accurate tier is unavailable

    async def twice() -> tuple[dict[str, object], dict[str, object]]:
        a = (await svc.predict("a film about a cat")).to_dict()
        b = (await svc.predict("a film about a cat")).to_dict()
        return a, b

    a, b = asyncio.run(twice())
    assert a["degraded"] == "circuit_open:accurate" and b["degraded"] == "circuit_open:accurate"
    assert b["cache"] is None  # recomputed, never served from the cache


def test_new_calibration_or_policy_never_serves_old_entries(tmp_path: Path) -> None:
    old = service(tmp_path, threshold=0.9)
    new = service(tmp_path, threshold=0.6)
    assert old.caches.exact is not None and new.caches.exact is not None
    assert old.caches.exact.namespace != new.caches.exact.namespace
    assert old.caches.exact.key("x") != new.caches.exact.key("x")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_killing_redis_mid_load_fails_no_request(tmp_path: Path) -> None:
    redis = RedisServer(free_port())
    redis.start()
    try:
        svc = service(tmp_path, backend="redis", redis_url=redis.url)
        bodies = [orjson.dumps({"input": f"review number {i % 50}"}) for i in range(200)]
        with serve_in_thread(create_app(svc)) as base:

            async def load_and_kill() -> dict[str, object]:
                load = asyncio.create_task(
                    run_load(base + "/v1/predict", bodies, rate=200, duration_s=2.0)
                )
                await asyncio.sleep(0.7)
                redis.stop()
                res = await load
                return summarize(res)

            summary = asyncio.run(load_and_kill())
            metrics = httpx.get(base + "/metrics").text
        assert summary["statuses"] == {"200": summary["completed"]}, summary["statuses"]
        assert summary["completed"] == summary["sent"] and not summary["transport_errors"]
        assert summary["cache"].get("exact", 0) > 0  # Redis served hits before it died
        assert 'tiergate_cache_store_up{store="redis"} 0.0' in metrics  # the outage is visible
        print(json.dumps(summary["statuses"]))
    finally:
        redis.stop()
