"""The dashboard's data and pages: counts from a real service, pages that stay offline."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from fastapi import FastAPI

from tiergate.api.pages import DOCS_ASSETS, install_pages
from tiergate.config import load_config
from tiergate.errors import NotReadyError
from tiergate.monitor.snapshot import snapshot
from tiergate.service import Service

CONFIG = """
service: snap
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.000002
    threshold: 0.9
  - name: accurate
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
slo: {p99_ms: 50, cost_per_1k: 0.05}
"""

# Loaded by a browser: src/href attributes, CSS url(), fetch targets.
_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")
_ABSOLUTE = re.compile(r"""https?://[^\s"'`<>)]+""")
_NAMESPACES = {"http://www.w3.org/2000/svg"}  # an identifier in createElementNS, not a load


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    (tmp_path / "config.yaml").write_text(CONFIG)
    s = Service.from_config(load_config(tmp_path / "config.yaml"))
    yield s
    await s.aclose()


async def _traffic(s: Service) -> None:
    await s.predict("a great, gorgeous film")  # confident: the fast tier answers
    await s.predict("a film about a dog")  # unsure: escalates to the accurate tier
    await s.predict("a great, gorgeous film")  # an exact cache hit


async def test_snapshot_counts_what_the_service_did(service: Service) -> None:
    before = snapshot(service)
    await _traffic(service)
    snap = snapshot(service)

    assert snap["t"] > before["t"]
    assert snap["service"] == "snap"
    assert snap["slo"]["p99_ms"] == 50 and snap["slo"]["cost_per_1k"] == 0.05
    assert [t["name"] for t in snap["tiers"]] == ["fast", "accurate"]
    fast, accurate = snap["tiers"]
    # The cache hit counts under the tier whose answer was cached.
    assert fast["requests"] == {"ok": 1, "degraded": 0, "failed": 0, "cached": 1}
    assert accurate["requests"] == {"ok": 1, "degraded": 0, "failed": 0, "cached": 0}
    assert snap["requests"] == {"total": 3, "ok": 2, "degraded": 0, "failed": 0, "cached": 1}
    assert (fast["calls"]["accepted"], fast["calls"]["escalated"]) == (1, 1)
    assert accurate["calls"]["accepted"] == 1
    assert fast["cost"] == pytest.approx(2 * 0.000002)
    assert accurate["cost"] == pytest.approx(0.0001)
    assert snap["escalations"] == [{"from": "fast", "to": "accurate", "n": 1}]
    assert snap["cache"]["exact"]["hit"] == 1 and snap["cache"]["exact"]["miss"] == 2
    assert snap["degraded"] == {} and snap["shed"] == 0
    assert (fast["threshold"], accurate["threshold"]) == (0.9, None)
    assert fast["breaker"] == accurate["breaker"] == "closed"

    lat = snap["latency"]
    assert lat["count"] == 3 and lat["sum"] > 0
    assert lat["le"] == sorted(lat["le"]) and len(lat["le"]) == len(lat["counts"])
    assert lat["counts"] == sorted(lat["counts"]) and lat["counts"][-1] <= 3
    assert before["latency"]["count"] == 0

    monitor = snap["monitor"]  # on by default
    assert monitor["enabled"] is True
    assert {"shadow", "labelled", "drift"} <= set(monitor)
    assert monitor["drift"]["alarms"] == []
    orjson.dumps(snap)  # JSON-ready as it is


async def test_snapshot_without_monitor(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG + "monitor: {enabled: false}\n")
    s = Service.from_config(load_config(tmp_path / "config.yaml"))
    try:
        await s.predict("awful, boring mess")
        snap = snapshot(s)
    finally:
        await s.aclose()
    assert snap["monitor"] is None
    assert snap["requests"]["total"] == 1


def _app(service: Any) -> FastAPI:
    app = FastAPI(title="tiergate", docs_url=None, redoc_url=None)

    @app.get("/v1/thing", summary="A documented route")
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    install_pages(app, service)
    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


_LOCAL_HOSTS = ("testserver", "127.0.0.1", "localhost")


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("", "data") or parts.hostname in _LOCAL_HOSTS


async def _assets_of(client: httpx.AsyncClient, page: str) -> list[str]:
    """The page's loaded references, resolved; each must be local and answer 200."""
    r = await client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    refs = [a or b for a, b in _REFERENCE.findall(r.text)]
    assert refs, page
    resolved = [str(httpx.URL(str(client.base_url) + page).join(ref)) for ref in refs]
    for url in resolved:
        assert _local(url), f"{page} loads {url}"
        if not url.startswith("data:"):
            got = await client.get(url)
            assert got.status_code == 200, url
    return resolved


async def test_dashboard_page_and_data(service: Service) -> None:
    await _traffic(service)
    async with _client(_app(lambda: service)) as client:
        assets = await _assets_of(client, "/dashboard")
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        page = await client.get("/dashboard")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for text in [page.text] + [(await client.get(a)).text for a in assets if "static" in a]:
            offsite = [u for u in _ABSOLUTE.findall(text) if u not in _NAMESPACES]
            assert [u for u in offsite if not _local(u)] == []
        for element in ('id="rps-total"', 'id="escalation-rate"', 'id="p99-ms"',
                        'id="drift-state"', 'id="cost-per-1k"'):  # fmt: skip
            assert element in page.text

        r = await client.get("/dashboard/data")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
        data = r.json()
        assert data["requests"]["total"] == 3 and data["tiers"][0]["name"] == "fast"


async def test_dashboard_data_is_503_until_the_service_is_loaded() -> None:
    def loading() -> Service:
        raise NotReadyError("models are still loading")

    async with _client(_app(loading)) as client:
        r = await client.get("/dashboard/data")
        assert r.status_code == 503
        assert r.json()["error"]["type"] == NotReadyError("x").type
        assert (await client.get("/dashboard")).status_code == 200


async def test_docs_are_served_offline_and_left_out_of_the_schema(service: Service) -> None:
    app = _app(lambda: service)
    async with _client(app) as client:
        for page in ("/docs", "/redoc"):
            assets = await _assets_of(client, page)
            assert any(a.startswith(f"http://testserver{DOCS_ASSETS}/") for a in assets)
        swagger = (await client.get("/docs")).text
        assert "url: '/openapi.json'" in swagger
        assert "validatorUrl" in swagger  # Swagger UI's online validator is off
        assert (await client.get("/docs/oauth2-redirect")).status_code == 200
        redoc = await client.get(f"{DOCS_ASSETS}/redoc.standalone.js")
        assert redoc.status_code == 200 and b"cdn.redoc.ly" not in redoc.content
        paths = set((await client.get("/openapi.json")).json()["paths"])
    assert paths == {"/v1/thing"}
