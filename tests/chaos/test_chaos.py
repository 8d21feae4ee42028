"""Chaos suite: the real demo server with a misbehaving accurate tier, under load.

Each scenario starts `tiergate serve` (a separate process) on a config that wraps the
accurate tier in the fault injector, drives it with open-loop load on loopback for a
few seconds, and checks: zero 5xx, every request answered exactly once, honest
`path`/`degraded` on every response, p99 within the deadline (+10 %), breakers that
open and recover, and retries within their budget. Results go to
bench/results/chaos.json when CHAOS_RESULTS is set (see bench/chaos.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tiergate.bench import served
from tiergate.demo import demo_config_dict, write_config
from tiergate.loadgen import run_load, summarize
from tiergate.offline import read_labelled
from tiergate.testing import metric_total

pytestmark = pytest.mark.chaos

DEADLINE_MS = 300.0
RATE = 60.0
SECONDS = 6.0

SCENARIOS: dict[str, dict[str, Any]] = {
    "latency_2s": {"fault": {"delay_ms": 2000}},
    "hang": {"fault": {"hang_rate": 1.0}},
    "errors_50pct": {"fault": {"error_rate": 0.5}},
    "garbage": {"fault": {"garbage_rate": 1.0}},
    # The cooldown doubles after every failed probe; capped at 1 s so that, whatever the
    # flap phase is when the load starts, a probe lands inside one of the healthy periods
    # of the 6 s run (uncapped, 0.5 → 1 → 2 → 4 s could step over both of them).
    "flapping": {"fault": {"flap_period_s": 1.5}, "breaker": {"max_cooldown_s": 1.0}},
}
ALLOWED_DEGRADED = {
    None, "deadline", "tier_timeout:accurate", "tier_error:accurate", "circuit_open:accurate",
    "overload",
}  # fmt: skip


def chaos_config(
    demo: Path, tmp: Path, fault: dict[str, Any], breaker: dict[str, Any] | None = None
) -> Path:
    base = demo_config_dict(demo)
    acc = base["tiers"][-1]
    acc["fault"] = fault
    acc["timeout_ms"] = 250
    acc["breaker"] = {"min_calls": 10, "window_s": 5, "cooldown_s": 0.5, "probes": 2}
    acc["breaker"].update(breaker or {})
    base["default_deadline_ms"] = DEADLINE_MS
    return write_config(base, tmp / "chaos.yaml")


@pytest.fixture(scope="module")
def bodies(demo_dir: Path) -> list[bytes]:
    texts, _ = read_labelled(demo_dir / "data" / "test.jsonl")
    return [orjson.dumps({"input": t}) for t in texts[:2000]]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario(scenario: str, demo_dir: Path, bodies: list[bytes], tmp_path: Path) -> None:
    config = chaos_config(
        demo_dir, tmp_path, SCENARIOS[scenario]["fault"], SCENARIOS[scenario].get("breaker")
    )
    with served(config, ready_timeout_s=180) as base:
        res = asyncio.run(
            run_load(base + "/v1/predict", bodies, rate=RATE, duration_s=SECONDS,
                     timeout_s=5.0, keep_responses=True)
        )  # fmt: skip
        metrics = httpx.get(base + "/metrics").text
    summary = summarize(res)
    p99 = summary["latency_ms"]["p99"]
    # Every request sent got exactly one response, and none was a 5xx.
    assert res.transport_errors == {}, res.transport_errors
    assert summary["completed"] == res.sent
    assert summary["errors_5xx"] == 0, summary["statuses"]
    assert set(res.statuses) <= {200, 429}
    degraded_seen: dict[str, int] = {}
    for status, payload in res.responses:
        if status != 200:
            continue
        body = orjson.loads(payload)
        path, tier, degraded = body["path"], body["tier"], body["degraded"]
        assert degraded in ALLOWED_DEGRADED, degraded
        assert path[0] == "fast" and tier in path, body
        if tier == "accurate":
            assert path == ["fast", "accurate"]
        if degraded and degraded != "overload":
            assert tier == "fast"  # the best answer so far, honestly labelled
        degraded_seen[str(degraded)] = degraded_seen.get(str(degraded), 0) + 1
    assert p99 <= DEADLINE_MS * 1.1, summary["latency_ms"]

    calls = metric_total(metrics, "tiergate_tier_calls_total", tier="accurate")
    retries = metric_total(metrics, "tiergate_retries_total", tier="accurate")
    opened = metric_total(metrics, "tiergate_breaker_transitions_total", tier="accurate", to="open")
    closed = metric_total(
        metrics, "tiergate_breaker_transitions_total", tier="accurate", to="closed"
    )
    assert retries <= 0.1 * calls + 10 + 1, (retries, calls)
    if scenario in {"hang", "garbage", "latency_2s", "errors_50pct"}:
        assert opened >= 1, "the breaker must open on a failing tier"
    if scenario in {"hang", "garbage", "latency_2s"}:
        # A dead tier's answers never appear.
        assert summary["tiers"].get("accurate", 0) == 0 or scenario == "latency_2s"
    if scenario == "flapping":
        assert opened >= 1 and closed >= 1, "the breaker must open and later recover"
        assert summary["tiers"].get("accurate", 0) > 0
    row = {
        "scenario": scenario, "fault": SCENARIOS[scenario]["fault"], "rate": RATE,
        "seconds": SECONDS, "deadline_ms": DEADLINE_MS, "sent": res.sent,
        "completed": summary["completed"], "statuses": summary["statuses"],
        "latency_ms": summary["latency_ms"], "p99_over_deadline": p99 / DEADLINE_MS,
        "degraded": degraded_seen, "tiers": summary["tiers"], "accurate_calls": calls,
        "retries": retries, "breaker_opened": opened, "breaker_closed": closed,
    }  # fmt: skip
    out = os.environ.get("CHAOS_RESULTS")
    if out:
        with Path(out).open("a") as f:
            f.write(json.dumps(row) + "\n")
    assert np.isfinite(p99) and re.match(r"\w+", scenario)
