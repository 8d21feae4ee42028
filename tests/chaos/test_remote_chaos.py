"""Chaos with remote tiers: a real MLServer (KServe V2) as the last tier, broken under load.

The cascade is a cheap in-process first tier (`tiergate.testing:keyword_sentiment`,
threshold 0.99, so about two inputs in three escalate) and a remote `v2-infer` tier
against a real MLServer process on loopback. Each scenario starts `tiergate serve` (a
separate process), drives it with open-loop load and breaks the upstream mid-load: a
SIGKILL and a restart on the same port, a SIGSTOP/SIGCONT freeze, a 429 + Retry-After
storm and a spell of malformed (non-JSON) bodies (the last two from a scripted proxy in
front of MLServer), and an upstream that is not there when the service starts. Checks:
zero 5xx (the fast tier's answer is the fallback), the right `degraded` reason, one
response per request, p99 within the deadline (+10 %), breakers that open and close
again, and no retry storm against a rate-limiting upstream. Results go to
bench/results/chaos.json (under "remote") when CHAOS_RESULTS is set (see bench/chaos.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tiergate.bench import served
from tiergate.loadgen import LoadResult, run_load, summarize
from tiergate.testing import (
    MLServer,
    PeerProcess,
    free_port,
    metric_total,
    serve_in_thread,
    toy_sentiment_repo,
)

pytestmark = pytest.mark.chaos
ROOT = Path(__file__).resolve().parents[2]
MLSERVER = Path(os.environ.get("TIERGATE_MLSERVER", ROOT / ".venv-mlserver/bin/mlserver"))

TIER = "heavy"
DEADLINE_MS = 500.0
TIMEOUT_MS = 300.0
RATE = 50.0
SECONDS = 6.0
# The brief's breaker, with the doubling cooldown capped at 2 s: an upstream that takes
# seconds to restart must not leave the tier dark for 16 s after it is back.
BREAKER = {"min_calls": 5, "window_s": 5, "cooldown_s": 0.5, "max_cooldown_s": 2, "probes": 2}
FAULT_AT_S = 1.5  # every fault starts this far into the load
FAULT_S = 2.0  # and lasts this long (the kill: until the restarted server is ready)
RECOVERY_TIMEOUT_S = 30.0

RESULTS: dict[str, dict[str, Any]] = {}  # per-scenario numbers, also appended to CHAOS_RESULTS

_POS = ["good", "great", "brilliant", "wonderful", "moving", "fun", "best", "love"]
_NEG = ["bad", "awful", "boring", "dull", "worst", "mess", "tedious", "hate"]
_PLAIN = ["film", "plot", "actors", "story", "scene", "ending", "music", "camera", "cast"]


def review_texts(n: int, seed: int = 0) -> list[str]:
    """Distinct reviews: one in three sure for the fast tier (margin 5), the rest not (≤ 2)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            words = rng.sample(_POS if rng.random() < 0.5 else _NEG, 5)
        else:
            words = rng.sample(_POS, rng.randint(0, 2)) + rng.sample(_NEG, rng.randint(0, 1))
        words += rng.sample(_PLAIN, 3)
        rng.shuffle(words)
        out.append(f"review {i}: " + " ".join(words))
    return out


BODIES = [orjson.dumps({"input": t}) for t in review_texts(2000)]


def write_config(tmp: Path, base_url: str) -> Path:
    cfg = {
        "service": "remote-chaos",
        "tiers": [
            {"name": "fast", "threshold": 0.99, "cost_per_call": 0.000001,
             "model": {"kind": "callable", "target": "tiergate.testing:keyword_sentiment",
                       "labels": ["negative", "positive"]}},
            {"name": TIER, "cost_per_call": 0.0004, "timeout_ms": TIMEOUT_MS, "breaker": BREAKER,
             "model": {"kind": "v2-infer", "base_url": base_url, "model": "sentiment",
                       "input_name": "text", "output_name": "predict_proba",
                       "labels": ["negative", "positive"]}},
        ],
        "default_deadline_ms": DEADLINE_MS,
        "cache": {"exact": {"enabled": False}},  # every request goes through the cascade
    }  # fmt: skip
    path = tmp / "remote-chaos.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


# --- the upstreams -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    if not MLSERVER.exists():
        if os.environ.get("CI"):
            pytest.fail("MLServer is not installed: bash scripts/peers/install_mlserver.sh")
        pytest.skip("MLServer is not installed: bash scripts/peers/install_mlserver.sh")
    repo = tmp_path_factory.mktemp("mlrepo")
    toy_sentiment_repo(repo)
    with MLServer(str(MLSERVER), str(repo)) as server:
        yield server


@pytest.fixture
def peer(mlserver: PeerProcess) -> PeerProcess:
    """The shared MLServer, running and not frozen (whatever an earlier scenario left)."""
    if mlserver.proc is None or mlserver.proc.poll() is not None:
        mlserver.start()
    else:
        mlserver.thaw()
    return mlserver


class Script:
    """A fault window for the scripted proxy, and a log of the infer calls it saw."""

    def __init__(self, target: str, mode: str) -> None:
        self.target = target
        # "rate_limit": 429 + Retry-After: 1; "garbage": 200 with HTML; "hang_one": the
        # first call in the window gets no answer until the window ends, the rest are proxied.
        self.mode = mode
        self.hung = False
        self.start = math.inf
        self.end = -math.inf
        self.calls: list[tuple[float, int, bool]] = []  # (monotonic time, status, in window)
        self._lock = threading.Lock()

    def arm(self, start: float, seconds: float) -> None:
        self.start, self.end = start, start + seconds

    def active(self, now: float) -> bool:
        return self.start <= now < self.end

    def record(self, now: float, status: int, faulty: bool) -> None:
        with self._lock:
            self.calls.append((now, status, faulty))


@contextmanager
def scripted_proxy(script: Script) -> Iterator[str]:
    """A real HTTP server on loopback in front of MLServer: faulty in its window, else a proxy."""
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=script.target, timeout=10.0, trust_env=False) as c:
            state["client"] = c
            yield

    async def handle(request: Request) -> Response:
        now = time.monotonic()
        infer = request.url.path.endswith("/infer")
        faulty = infer and script.active(now)
        if faulty and script.mode == "hang_one":
            faulty, script.hung = not script.hung, True
            if faulty:
                await asyncio.sleep(script.end - now)
        if faulty and script.mode == "rate_limit":
            resp = Response(b'{"error": "rate limit exceeded"}', 429, {"Retry-After": "1"},
                            media_type="application/json")  # fmt: skip
        elif faulty and script.mode == "garbage":
            resp = Response(b"<html><body>upstream hiccup</body></html>", 200,
                            media_type="text/html")  # fmt: skip
        else:
            up = await state["client"].request(
                request.method, request.url.path, content=await request.body(),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            resp = Response(up.content, up.status_code, media_type=up.headers.get("content-type"))
        if infer:
            script.record(now, resp.status_code, faulty)
        return resp

    app = Starlette(
        routes=[Route("/{path:path}", handle, methods=["GET", "POST"])], lifespan=lifespan
    )
    with serve_in_thread(app) as base:
        yield base


# --- one run: serve, load with timed faults, measure, wait for recovery --------------------

Action = tuple[float, str, Callable[[], Any]]


def drive(base: str, actions: list[Action]) -> tuple[LoadResult, dict[str, Any]]:
    """Open-loop load on ``base``; each action runs (in a thread) at its offset into the load.

    Returns the load's result and, per action, when it finished (s into the load) and
    what it returned.
    """
    marks: dict[str, Any] = {}

    async def go() -> LoadResult:
        t0 = time.monotonic()

        async def act() -> None:
            for at, name, fn in actions:
                await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
                value = await asyncio.to_thread(fn)
                marks[name] = {"at_s": round(time.monotonic() - t0, 3), "value": value}

        task = asyncio.create_task(act())
        res = await run_load(base + "/v1/predict", BODIES, rate=RATE, duration_s=SECONDS,
                             timeout_s=5.0, keep_responses=True)  # fmt: skip
        await task
        return res

    return asyncio.run(go()), marks


def wait_recovered(base: str) -> float:
    """Seconds until an escalated request is answered by the remote tier, undegraded, and
    the breaker is closed (state 0)."""
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < RECOVERY_TIMEOUT_S:
        r = httpx.post(base + "/v1/predict", json={"input": f"probe {i}: a film about the cast"},
                       timeout=5.0)  # fmt: skip
        assert r.status_code < 500, r.text
        body = r.json()
        if r.status_code == 200 and body["tier"] == TIER and body["degraded"] is None:
            text = httpx.get(base + "/metrics", timeout=5.0).text
            if metric_total(text, "tiergate_breaker_state", tier=TIER) == 0:
                return time.monotonic() - t0
        i += 1
        time.sleep(0.05)
    raise AssertionError(f"the remote tier did not recover within {RECOVERY_TIMEOUT_S} s")


def tier_status(base: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(base + "/readyz", timeout=5.0)
    tiers = r.json().get("tiers", []) if r.headers.get("content-type", "").startswith(
        "application/json") else []  # fmt: skip
    return r.status_code, next((t for t in tiers if t.get("name") == TIER), {})


def run(config: Path, actions: Callable[[str], list[Action]]) -> dict[str, Any]:
    """Serve ``config``; load it with ``actions(base_url)`` timed; measure; await recovery."""
    with served(config, ready_timeout_s=120) as base:
        res, marks = drive(base, actions(base))
        after_load = httpx.get(base + "/metrics", timeout=5.0).text
        ready_status, tier = tier_status(base)
        recovery_s = wait_recovered(base)
        final = httpx.get(base + "/metrics", timeout=5.0).text
    return {"res": res, "marks": marks, "after_load": after_load, "final": final,
            "ready_status": ready_status, "tier": tier, "recovery_s": recovery_s}  # fmt: skip


def check(
    out: dict[str, Any], allowed: set[str | None], window: tuple[float, float]
) -> dict[str, Any]:
    """The checks every scenario shares; returns the numbers for the results row."""
    res: LoadResult = out["res"]
    summary = summarize(res)
    # Every request sent got exactly one response, and none was a 5xx.
    assert res.transport_errors == {}, res.transport_errors
    assert summary["completed"] == res.sent
    assert summary["errors_5xx"] == 0, (summary["statuses"], summary["error_reasons"])
    assert set(res.statuses) <= {200, 429}, summary["statuses"]
    degraded: dict[str, int] = {}
    phases: dict[str, dict[str, int]] = {"before": {}, "during": {}, "after": {}}
    # Without transport errors, send offsets and responses are recorded in step.
    for (status, payload), offset in zip(res.responses, res.send_offsets_s, strict=True):
        if status != 200:
            continue
        body = orjson.loads(payload)
        path, tier, reason = body["path"], body["tier"], body["degraded"]
        assert reason in allowed, body
        assert path[0] == "fast" and tier in path, body
        if tier == TIER:
            assert path == ["fast", TIER] and reason is None, body
        if reason and reason != "overload":
            assert tier == "fast", body  # the best answer so far, honestly labelled
        degraded[str(reason)] = degraded.get(str(reason), 0) + 1
        phase = "before" if offset < window[0] else "during" if offset < window[1] else "after"
        key = f"{tier}:{reason}" if reason else str(tier)
        phases[phase][key] = phases[phase].get(key, 0) + 1
    p99 = summary["latency_ms"]["p99"]
    assert p99 <= DEADLINE_MS * 1.1, summary["latency_ms"]
    final, after_load = out["final"], out["after_load"]
    tier = out["tier"]
    return {
        "rate": RATE, "seconds": SECONDS, "deadline_ms": DEADLINE_MS, "timeout_ms": TIMEOUT_MS,
        "breaker": BREAKER, "sent": res.sent, "completed": summary["completed"],
        "statuses": summary["statuses"],
        "latency_ms": {k: round(v, 2) for k, v in summary["latency_ms"].items() if v is not None},
        "p99_over_deadline": round(p99 / DEADLINE_MS, 3), "degraded": degraded,
        "tiers": summary["tiers"], "phases": phases,
        "fault_window_s": [round(window[0], 2), round(window[1], 2)],
        "gateway_upstream_calls": tier.get("upstream", {}).get("calls"),
        "gateway_upstream_failures": tier.get("upstream", {}).get("failures"),
        "last_upstream_error": tier.get("upstream", {}).get("last_error"),
        "tier_calls": metric_total(after_load, "tiergate_tier_calls_total", tier=TIER),
        "retries": metric_total(after_load, "tiergate_retries_total", tier=TIER),
        "breaker_opened": metric_total(final, "tiergate_breaker_transitions_total", tier=TIER, to="open"),
        "breaker_closed": metric_total(final, "tiergate_breaker_transitions_total", tier=TIER,
                                 to="closed"),
        "breaker_state_after_load": metric_total(after_load, "tiergate_breaker_state", tier=TIER),
        "breaker_state_final": metric_total(final, "tiergate_breaker_state", tier=TIER),
        "recovery_after_load_s": round(out["recovery_s"], 3),
    }  # fmt: skip


def record(scenario: str, fault: str, row: dict[str, Any]) -> None:
    row = {"suite": "remote", "scenario": scenario, "fault": fault, **row}
    RESULTS[scenario] = row
    out = os.environ.get("CHAOS_RESULTS")
    if out:
        with Path(out).open("a") as f:
            f.write(json.dumps(row) + "\n")


def assert_budgeted_retries(row: dict[str, Any]) -> None:
    assert row["retries"] <= 0.1 * row["tier_calls"] + 10 + 1, row


def assert_breaker_cycled(row: dict[str, Any]) -> None:
    assert row["breaker_opened"] >= 1, "the breaker must open on a failing upstream"
    assert row["breaker_closed"] >= 1 and row["breaker_state_final"] == 0, row


# --- scenarios -----------------------------------------------------------------------------

CONNECT_OR_OPEN = {f"tier_error:{TIER}", f"circuit_open:{TIER}"}


def restart(peer: PeerProcess) -> None:
    """Start a killed peer again on its port; blocks until it is ready.

    ``stop()`` first: it closes the dead process's log file, which ``start()`` would
    otherwise replace unclosed (a ResourceWarning, an error under this suite's filters).
    """
    peer.stop()
    peer.start()


def test_upstream_killed_mid_load_then_restarted(peer: PeerProcess, tmp_path: Path) -> None:
    config = write_config(tmp_path, peer.url)

    def actions(base: str) -> list[Action]:
        def readyz() -> Any:  # what the service says of itself while its upstream is down
            status, tier = tier_status(base)
            return {"status": status, "breaker": tier.get("breaker"),
                    "last_error": tier.get("upstream", {}).get("last_error")}  # fmt: skip

        return [
            (FAULT_AT_S, "killed", peer.kill),
            (FAULT_AT_S + 0.5, "readyz_during_outage", readyz),
            (FAULT_AT_S + 0.5, "restarted", lambda: restart(peer)),
        ]

    out = run(config, actions)
    window = (FAULT_AT_S, out["marks"]["restarted"]["at_s"])
    allowed = {None, "deadline", "overload", f"tier_timeout:{TIER}", *CONNECT_OR_OPEN}
    row = check(out, allowed, window)
    row["restart_s"] = round(window[1] - window[0], 2)
    row["readyz_during_outage"] = out["marks"]["readyz_during_outage"]["value"]
    record("remote_killed_restarted", "SIGKILL mid-load, restart on the same port", row)
    assert f"tier_error:{TIER}" in row["degraded"], row["degraded"]  # refused connections
    assert f"circuit_open:{TIER}" in row["degraded"], row["degraded"]
    assert row["phases"]["before"].get(TIER, 0) > 0  # the remote tier answered before
    # Decided: an upstream that dies after start-up degrades the service, it does not make
    # it unready (the fast tier still answers); /readyz says what is wrong.
    outage = row["readyz_during_outage"]
    assert outage["status"] == 200 and "refused" in (outage["last_error"] or ""), outage
    assert_breaker_cycled(row)
    assert_budgeted_retries(row)


def test_upstream_frozen_then_thawed(peer: PeerProcess, tmp_path: Path) -> None:
    config = write_config(tmp_path, peer.url)
    out = run(config, lambda _: [
        (FAULT_AT_S, "frozen", peer.freeze),
        (FAULT_AT_S + FAULT_S, "thawed", peer.thaw),
    ])  # fmt: skip
    window = (FAULT_AT_S, out["marks"]["thawed"]["at_s"])
    allowed = {None, "deadline", "overload", f"tier_timeout:{TIER}", f"circuit_open:{TIER}"}
    row = check(out, allowed, window)
    record("remote_frozen", f"SIGSTOP for {FAULT_S} s, then SIGCONT", row)
    assert f"tier_timeout:{TIER}" in row["degraded"], row["degraded"]
    assert f"circuit_open:{TIER}" in row["degraded"], row["degraded"]
    assert row["phases"]["after"].get(TIER, 0) > 0, row["phases"]  # recovered within the load
    assert_breaker_cycled(row)
    assert_budgeted_retries(row)


def test_429_storm_is_honoured_without_a_retry_storm(peer: PeerProcess, tmp_path: Path) -> None:
    script = Script(peer.url, "rate_limit")
    with scripted_proxy(script) as proxy:
        config = write_config(tmp_path, proxy)
        out = run(config, lambda _: [
            (FAULT_AT_S, "storm", lambda: script.arm(time.monotonic(), FAULT_S)),
        ])  # fmt: skip
    window = (FAULT_AT_S, FAULT_AT_S + FAULT_S)
    allowed = {None, "deadline", "overload", f"rate_limited:{TIER}"}
    row = check(out, allowed, window)
    in_storm = [c for c in script.calls if c[2]]
    # Calls that reached the upstream while it kept asking for a 1 s pause, and those the
    # cascade turned away itself meanwhile.
    wanted = sum(v for k, v in row["phases"]["during"].items() if k == f"fast:rate_limited:{TIER}")
    row.update({
        "upstream_calls": len(script.calls), "upstream_calls_in_storm": len(in_storm),
        "upstream_429s": sum(1 for c in script.calls if c[1] == 429),
        "rate_limited_answers_in_storm": wanted,
    })  # fmt: skip
    record("remote_429_storm", f"429 + Retry-After: 1 for {FAULT_S} s (scripted proxy)", row)
    assert f"rate_limited:{TIER}" in row["degraded"], row["degraded"]
    # Retry-After: 1 means about one call per second of storm; a few more may already
    # have been queued for the tier when the first 429 came back.
    assert len(in_storm) <= 2 * FAULT_S + 3, (len(in_storm), wanted)
    assert wanted >= 5 * len(in_storm), (len(in_storm), wanted)
    assert row["retries"] == 0  # flow control is never retried
    assert row["breaker_opened"] == 0  # and is not ill health
    assert row["phases"]["after"].get(TIER, 0) > 0, row["phases"]


def test_malformed_bodies_open_the_breaker(peer: PeerProcess, tmp_path: Path) -> None:
    script = Script(peer.url, "garbage")
    with scripted_proxy(script) as proxy:
        config = write_config(tmp_path, proxy)
        out = run(config, lambda _: [
            (FAULT_AT_S, "garbage", lambda: script.arm(time.monotonic(), FAULT_S)),
        ])  # fmt: skip
    window = (FAULT_AT_S, FAULT_AT_S + FAULT_S)
    allowed = {None, "deadline", "overload", *CONNECT_OR_OPEN}
    row = check(out, allowed, window)
    row.update({
        "upstream_calls": len(script.calls),
        "upstream_calls_malformed": sum(1 for c in script.calls if c[2]),
    })  # fmt: skip
    record("remote_malformed", f"200 with an HTML body for {FAULT_S} s (scripted proxy)", row)
    assert f"tier_error:{TIER}" in row["degraded"], row["degraded"]
    assert f"circuit_open:{TIER}" in row["degraded"], row["degraded"]
    assert "not JSON" in (row["last_upstream_error"] or "") or row["breaker_opened"] >= 1
    assert row["phases"]["after"].get(TIER, 0) > 0, row["phases"]
    assert_breaker_cycled(row)
    assert_budgeted_retries(row)


def test_one_hung_call_is_abandoned_and_does_not_block_the_tier(
    peer: PeerProcess, tmp_path: Path
) -> None:
    script = Script(peer.url, "hang_one")
    with scripted_proxy(script) as proxy:
        config = write_config(tmp_path, proxy)
        out = run(config, lambda _: [
            (FAULT_AT_S, "hang", lambda: script.arm(time.monotonic(), FAULT_S * 2)),
        ])  # fmt: skip
    window = (FAULT_AT_S, FAULT_AT_S + FAULT_S * 2)
    allowed = {None, "deadline", "overload", f"tier_timeout:{TIER}", f"circuit_open:{TIER}"}
    row = check(out, allowed, window)
    row["upstream_calls"] = len(script.calls)
    row["upstream_calls_while_one_hung"] = sum(
        1 for c in script.calls if window[0] < c[0] - script.start + FAULT_AT_S < window[1]
    )
    record("remote_one_hung_call", f"one infer call unanswered for {2 * FAULT_S} s", row)
    # The upstream answers every other call at once: after the hung call's timeout
    # (300 ms) the tier should go on answering (the breaker may open on the timeouts and
    # close again after the cooldown).
    assert row["phases"]["during"].get(TIER, 0) > 0, row["phases"]


def refused_at_start(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str, float]:
    upstream = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(tmp_path, upstream)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tiergate", "serve", str(config), "--port", str(free_port()),
         "--log-level", "warning"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return proc, upstream, time.monotonic() - t0


def test_refused_at_start_up_fails_the_probe_naming_the_upstream(tmp_path: Path) -> None:
    proc, upstream, took = refused_at_start(tmp_path)
    err = proc.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    record("remote_refused_at_start", "no upstream listening when `tiergate serve` starts", {
        "exit_code": proc.returncode, "seconds_to_exit": round(took, 2),
        "traceback_in_stderr": "Traceback" in err, "stderr_lines": len(lines),
        "message": next((line.strip() for line in lines if "not ready" in line), None),
    })  # fmt: skip
    assert proc.returncode != 0, err
    assert upstream in err and "not ready" in err and "connection refused" in err, err


def test_refused_at_start_up_is_one_clear_line_without_a_traceback(tmp_path: Path) -> None:
    proc, _, _ = refused_at_start(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"tier {TIER!r}" in proc.stderr, proc.stderr  # which tier, not only which URL
