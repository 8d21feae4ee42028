"""The HTTP contract on a real uvicorn server on loopback (scripted callable tiers).

The models here are :func:`tiergate.testing.keyword_sentiment` (a deterministic
callable), so these tests check the HTTP layer and the policy, not model quality;
tests against the real demo models are in ``test_demo_http.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tiergate.api import create_app
from tiergate.config import load_config
from tiergate.service import Service
from tiergate.testing import serve_in_thread

CONFIG = """
service: keywords
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.000001
    threshold: 0.9
  - name: accurate
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
limits: {max_input_chars: 200, max_batch_items: 4, max_body_bytes: 4096}
"""

FIELDS = {
    "output", "confidence", "tier", "path", "cache", "degraded", "latency_ms", "cost",
    "model_version", "calibration_version",
}  # fmt: skip


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(CONFIG)
    service = Service.from_config(load_config(path))
    with serve_in_thread(create_app(service)) as base:
        yield base


def post(url: str, route: str, **kw: object) -> httpx.Response:
    return httpx.post(url + route, timeout=5, **kw)  # type: ignore[arg-type]


def test_confident_input_answered_by_fast_tier(url: str) -> None:
    r = post(url, "/v1/predict", json={"input": "a great, gorgeous film"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == FIELDS
    assert body["output"] == "positive" and body["tier"] == "fast"
    assert body["path"] == ["fast"] and body["cache"] is None and body["degraded"] is None
    assert body["cost"] == pytest.approx(0.000001)
    assert body["latency_ms"] > 0


def test_uncertain_input_escalates(url: str) -> None:
    body = post(url, "/v1/predict", json={"input": "a film about a dog"}).json()
    assert body["path"] == ["fast", "accurate"] and body["tier"] == "accurate"
    assert body["cost"] == pytest.approx(0.000101)


def test_form_content_type_from_curl_d_is_accepted(url: str) -> None:
    r = post(
        url, "/v1/predict", content=b'{"input":"a gorgeous, moving film"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["output"] == "positive"


def test_batch_preserves_order(url: str) -> None:
    r = post(url, "/v1/predict/batch", json={"inputs": ["great great", "awful awful", "hm"]})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["output"] for x in results][:2] == ["positive", "negative"]
    assert all(set(x) == FIELDS for x in results)
    assert results[2]["path"] == ["fast", "accurate"]


@pytest.mark.parametrize(
    ("route", "content", "status", "needle"),
    [
        ("/v1/predict", b"{not json", 422, "not valid JSON"),
        ("/v1/predict", b"", 422, "empty"),
        ("/v1/predict", b'["a"]', 422, "JSON object"),
        ("/v1/predict", b'{"input": 3}', 422, "must be a string, got a number"),
        ("/v1/predict", b'{"input": null}', 422, "got null"),
        ("/v1/predict", b'{"input": ["x"]}', 422, "got an array"),
        ("/v1/predict", b'{"input": "   \\u0000 "}', 422, "empty"),
        ("/v1/predict", b'{"text": "x"}', 422, "unknown field"),
        ("/v1/predict", b'{"deadline_ms": 5}', 422, "missing field: input"),
        ("/v1/predict", b'{"input": "x", "deadline_ms": -1}', 422, "deadline_ms"),
        ("/v1/predict", b'{"input": "x", "deadline_ms": "soon"}', 422, "deadline_ms"),
        ("/v1/predict", b'{"input": "' + b"a" * 201 + b'"}', 413, "characters"),
        ("/v1/predict", b'{"input": "' + b"a" * 5000 + b'"}', 413, "body"),
        ("/v1/predict", b'{"input": "\xff\xfe"}', 422, "not valid JSON"),
        ("/v1/predict", b'{"input": "x", "a": [[[[[[[[[[1]]]]]]]]]]}', 422, "nested"),
        ("/v1/predict/batch", b'{"inputs": []}', 422, "empty list"),
        ("/v1/predict/batch", b'{"inputs": "x"}', 422, "list of strings"),
        ("/v1/predict/batch", b'{"inputs": ["a","b","c","d","e"]}', 413, "limit is 4"),
        ("/v1/predict/batch", b'{"inputs": ["ok", 1]}', 422, "inputs[1]"),
    ],
)
def test_bad_input_gets_typed_4xx(
    url: str, route: str, content: bytes, status: int, needle: str
) -> None:
    r = post(url, route, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"]
    assert err["type"] in {"invalid_input", "input_too_large"}


def test_unknown_route_and_method_are_json_errors(url: str) -> None:
    r = httpx.get(url + "/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = httpx.get(url + "/v1/predict")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


def test_health_ready_and_openapi(url: str) -> None:
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz").json()
    assert ready["status"] == "ready" and [t["name"] for t in ready["tiers"]] == [
        "fast",
        "accurate",
    ]
    spec = httpx.get(url + "/openapi.json").json()
    assert "/v1/predict" in spec["paths"]
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert "input" in body["schema"]["properties"]


def test_metrics_expose_tiers_escalations_latency_and_cost(url: str) -> None:
    post(url, "/v1/predict", json={"input": "something neutral"})
    post(url, "/v1/predict", json={"input": 5})
    text = httpx.get(url + "/metrics").text
    for name in (
        "tiergate_requests_total", "tiergate_escalations_total", "tiergate_tier_latency_seconds",
        "tiergate_request_latency_seconds_bucket", "tiergate_cost_total",
        'tiergate_rejected_requests_total{type="invalid_input"}',
    ):  # fmt: skip
        assert name in text, name


def test_not_ready_until_loader_finishes(tmp_path: Path) -> None:
    import threading

    gate = threading.Event()
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)

    def loader() -> Service:
        gate.wait(10)
        return Service.from_config(load_config(path))

    with serve_in_thread(create_app(loader=loader)) as base:
        assert httpx.get(base + "/healthz").status_code == 200
        r = httpx.get(base + "/readyz")
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        assert post(base, "/v1/predict", json={"input": "x"}).status_code == 503
        gate.set()
        for _ in range(200):
            if httpx.get(base + "/readyz").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert post(base, "/v1/predict", json={"input": "great"}).status_code == 200
