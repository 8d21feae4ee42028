"""Keys and rate limits on a real uvicorn server, and shared limits in a real Redis."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tiergate.api import create_app
from tiergate.config import load_config
from tiergate.service import Service
from tiergate.tenancy import RateLimit, add_key
from tiergate.tenancy.ratelimit import RedisRateLimiter
from tiergate.testing import ManualClock, RedisServer, free_port, serve_in_thread

pytestmark = pytest.mark.integration

CONFIG = """
service: keyed
tiers:
  - name: only
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
auth: {keys_file: keys.yaml}
access_log: true
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    root: Path = tmp_path_factory.mktemp("keyed")
    keys = {
        "user": add_key(root / "keys.yaml", "user"),
        "ops": add_key(root / "keys.yaml", "ops", rights=("metrics", "docs")),
        "slow": add_key(root / "keys.yaml", "slow", rate_limit=RateLimit(per_minute=2)),
    }
    (root / "config.yaml").write_text(CONFIG)
    service = Service.from_config(load_config(root / "config.yaml"))
    with serve_in_thread(create_app(service)) as base:
        yield base, keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_predict_needs_a_key(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    r = httpx.post(base + "/v1/predict", json={"input": "a great film"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    r = httpx.post(base + "/v1/predict", json={"input": "a great film"},
                   headers=auth(keys["user"][:-1] + "x"))  # fmt: skip
    assert r.status_code == 401
    r = httpx.post(base + "/v1/predict", json={"input": "a great film"}, headers=auth(keys["user"]))
    assert r.status_code == 200 and r.json()["output"] == "positive"
    r = httpx.post(base + "/v1/predict", json={"input": "x"}, headers=auth(keys["ops"]))
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"


def test_probes_stay_open_and_metrics_and_docs_need_the_right(
    keyed: tuple[str, dict[str, str]],
) -> None:
    base, keys = keyed
    assert httpx.get(base + "/healthz").status_code == 200
    ready = httpx.get(base + "/readyz")
    assert ready.status_code == 200 and ready.json()["auth"] == "keys"
    assert httpx.get(base + "/metrics").status_code == 401
    assert httpx.get(base + "/metrics", headers=auth(keys["user"])).status_code == 403
    m = httpx.get(base + "/metrics", headers=auth(keys["ops"]))
    assert m.status_code == 200 and 'tiergate_key_requests_total{key="user"}' in m.text
    assert httpx.get(base + "/openapi.json").status_code == 401
    assert httpx.get(base + "/openapi.json", headers=auth(keys["ops"])).status_code == 200
    for key in keys.values():
        assert key not in m.text and key not in ready.text


def test_rate_limit_is_429_with_retry_after(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    codes = [httpx.post(base + "/v1/predict", json={"input": "fine"},
                        headers=auth(keys["slow"])) for _ in range(3)]  # fmt: skip
    assert [r.status_code for r in codes] == [200, 200, 429]
    body = codes[2].json()["error"]
    assert body["type"] == "rate_limited" and body["key"] == "slow"
    assert 1 <= int(codes[2].headers["retry-after"]) <= 30


def test_request_id_is_echoed_or_made_and_the_access_log_names_the_key(
    keyed: tuple[str, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    base, keys = keyed
    with caplog.at_level(logging.INFO, logger="tiergate.access"):
        r = httpx.post(base + "/v1/predict", json={"input": "a great film"},
                       headers={**auth(keys["user"]), "X-Request-Id": "abc-123"})  # fmt: skip
        bad = httpx.post(base + "/v1/predict", json={"input": "x"},
                         headers={**auth(keys["user"]), "X-Request-Id": "no spaces allowed"})  # fmt: skip
    assert r.headers["x-request-id"] == "abc-123"
    assert (
        bad.headers["x-request-id"] != "no spaces allowed"
        and len(bad.headers["x-request-id"]) == 16
    )
    assert httpx.get(base + "/healthz").headers["x-request-id"]
    lines = [
        json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "tiergate.access"
    ]
    mine = next(line for line in lines if line["request_id"] == "abc-123")
    assert mine["key"] == "user" and mine["status"] == 200 and mine["tier"] == "only"
    assert all(k not in caplog.text for k in keys.values())


REDIS = shutil.which("redis-server")


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")
async def test_replicas_share_one_limit_in_redis_and_fall_back_while_it_is_down() -> None:
    server = RedisServer(free_port())
    server.start()
    clock = ManualClock()
    fallbacks: list[int] = []
    # Two limiters = two replicas; the limit is shared, not multiplied.
    a = RedisRateLimiter(server.url, clock=clock, on_fallback=lambda: fallbacks.append(1))
    b = RedisRateLimiter(server.url, clock=clock)
    limit = RateLimit(per_minute=4)
    try:
        waits = [await (a if i % 2 else b).acquire("team", limit) for i in range(6)]
        assert waits[:4] == [0.0] * 4 and all(w > 0 for w in waits[4:])
        assert a.shared and b.shared

        server.stop()
        assert await a.acquire("team", limit) == 0.0  # per process now: a fresh bucket
        assert not a.shared and fallbacks == [1]
        for _ in range(3):
            await a.acquire("team", limit)
        assert await a.acquire("team", limit) > 0  # the local bucket still limits

        server.start()  # a restarted Redis (no persistence here) starts with no buckets
        clock.advance(1.5)  # past the back-off: Redis is tried again
        waits = [await (b if i % 2 else a).acquire("team", limit) for i in range(5)]
        assert a.shared and b.shared
        assert waits[:4] == [0.0] * 4 and waits[4] > 0  # one shared limit again
    finally:
        await a.aclose()
        await b.aclose()
        server.stop()
