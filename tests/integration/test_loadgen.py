"""The load generator behind `tiergate bench`, against a real server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tiergate.api import create_app
from tiergate.config import load_config
from tiergate.loadgen import run_load, summarize
from tiergate.service import Service
from tiergate.testing import serve_in_thread

pytestmark = pytest.mark.integration

CONFIG = """
service: lg
tiers:
  - name: only
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.001
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("lg") / "config.yaml"
    path.write_text(CONFIG)
    with serve_in_thread(create_app(Service.from_config(load_config(path)))) as base:
        yield base + "/v1/predict"


BODIES = [orjson.dumps({"input": f"great film {i}"}) for i in range(20)] + [b'{"input": 1}']


async def test_open_loop_sends_on_schedule_and_counts_everything(url: str) -> None:
    res = await run_load(url, BODIES, rate=200, duration_s=1.0)
    s = summarize(res)
    assert res.sent == 200 and s["completed"] == 200
    assert s["statuses"] == {"200": 191, "422": 9}  # bodies cycle; every 21st is invalid
    assert s["tiers"] == {"only": 191}
    # 20 distinct valid inputs: the first of each is computed, the repeats are exact hits.
    assert s["cache"] == {"exact": 171}
    assert s["mean_cost"] == pytest.approx(20 * 0.001 / 191)
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]
    assert set(s["latency_ms_by_status"]) == {"200", "422"}
    # Latency counts from the intended send time: offsets are on the 5 ms grid.
    assert sorted(res.send_offsets_s)[:3] == pytest.approx([0.0, 0.005, 0.01], abs=1e-9)


async def test_closed_loop_keeps_concurrency(url: str) -> None:
    res = await run_load(url, BODIES[:20], concurrency=4, duration_s=0.5)
    s = summarize(res)
    assert s["completed"] == res.sent > 0 and s["statuses"] == {"200": res.sent}
    assert not s["transport_errors"]


async def test_needs_exactly_one_mode(url: str) -> None:
    with pytest.raises(ValueError):
        await run_load(url, BODIES, duration_s=0.1)


async def test_server_errors_are_counted_by_reason(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG + "    fault: {error_rate: 1.0}\n    retry: {max_retries: 0}\n")
    with serve_in_thread(create_app(Service.from_config(load_config(path)))) as base:
        res = await run_load(base + "/v1/predict", BODIES[:5], rate=50, duration_s=0.2)
    s = summarize(res)
    assert s["errors_5xx"] == res.sent == 10
    assert sum(s["error_reasons"].values()) == 10
    # every failure names its status, error type, reason and the tiers tried
    assert all(k.split()[0].startswith("5") and "only" in k for k in s["error_reasons"]), s
