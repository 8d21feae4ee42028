"""Two real `tiergate serve` processes sharing one real Redis: budgets and rate limits
hold across replicas under a burst, and survive Redis being killed and restarted.

200 requests are fired at once, half at each replica. A budget covering exactly 50 of
them answers exactly 50 and refuses 150 with 402 naming the budget, and the recorded
spend is the budget to the cent; a limit of 50 per minute lets exactly 50 through.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tiergate.tenancy import Budget, RateLimit, add_key
from tiergate.testing import RedisServer, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server is not installed"
    ),
]

CONFIG = """
service: shared
tiers:
  - name: only
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}}
    cost_per_call: 0.01
auth: {{keys_file: keys.yaml, rate_limit_store: redis, redis_url: "{redis}"}}
"""


class Replicas:
    def __init__(self, root: Path, redis: RedisServer, keys: dict[str, str]) -> None:
        self.root, self.redis, self.keys = root, redis, keys
        self.ports = [free_port(), free_port()]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._files: list[Any] = []

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            log = (self.root / f"serve{i}.log").open("wb")
            self._files.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "tiergate", "serve", str(self.root / "config.yaml"),
                 "--port", str(port), "--log-level", "warning"],
                env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        for base, proc in zip(self.bases, self.procs, strict=True):
            deadline = time.monotonic() + 60
            while True:  # a real process: poll until it answers
                try:
                    if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, self.logs()
                time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.root.glob("serve*.log"))

    def stop(self) -> None:
        for proc in self.procs:  # by PID
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self._files:
            f.close()

    def metric(self, name: str, **labels: str) -> float:
        """``name`` summed over both replicas."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.compile(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", re.M)
        total = 0.0
        for base in self.bases:
            text = httpx.get(base + "/metrics", headers=auth(self.keys["ops"])).text
            total += sum(float(v) for v in pattern.findall(text))
        return total


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    keys_file = root / "keys.yaml"
    keys = {
        "capped": add_key(keys_file, "capped", budget=Budget(amount=0.5, period="day")),
        "limited": add_key(keys_file, "limited", rate_limit=RateLimit(per_minute=50)),
        "busy": add_key(
            keys_file,
            "busy",
            rate_limit=RateLimit(per_second=1000, burst=1000),
            budget=Budget(amount=1000.0, period="day"),
        ),
        "ops": add_key(keys_file, "ops", rights=("metrics", "usage")),
    }
    redis = RedisServer(free_port())
    redis.start()
    (root / "config.yaml").write_text(CONFIG.format(redis=redis.url))
    r = Replicas(root, redis, keys)
    try:
        r.start()
        yield r
    finally:
        r.stop()
        redis.stop()


async def _burst(r: Replicas, key: str, n: int, tag: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return list(await asyncio.gather(*(
            client.post(r.bases[i % 2] + "/v1/predict", headers=auth(r.keys[key]),
                        json={"input": f"a great film, {tag} take {i}"})
            for i in range(n)
        )))  # fmt: skip


def test_a_budget_for_50_answers_exactly_50_of_200_across_two_replicas(
    replicas: Replicas,
) -> None:
    answers = asyncio.run(_burst(replicas, "capped", 200, "budget"))
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 50 and codes.count(402) == 150, sorted(set(codes))
    refused = next(a for a in answers if a.status_code == 402)
    err = refused.json()["error"]
    assert err["type"] == "budget_exceeded" and err["key"] == "capped"
    assert err["budget"] == 0.5 and err["period"] == "day" and err["remaining"] < 0.01
    assert err["resets_at"].endswith("T00:00:00Z") and int(refused.headers["retry-after"]) >= 1
    for base in replicas.bases:  # the key's own view, from either replica
        usage = httpx.get(base + "/v1/usage", headers=auth(replicas.keys["capped"])).json()
        b = usage["budget"]
        assert usage["key"] == "capped" and b["shared"]
        assert b["spent"] == 0.5 and b["reserved"] == 0 and b["remaining"] == 0
    assert round(replicas.metric("tiergate_key_spend_total", key="capped"), 9) == 0.5
    assert httpx.get(replicas.bases[0] + "/v1/usage").status_code == 401


def test_a_rate_limit_of_50_lets_exactly_50_of_200_through_across_two_replicas(
    replicas: Replicas,
) -> None:
    answers = asyncio.run(_burst(replicas, "limited", 200, "rate"))
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 50 and codes.count(429) == 150, sorted(set(codes))
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.json()["error"]["type"] == "rate_limited" and limited.headers["retry-after"]


def test_redis_killed_mid_run_no_5xx_fallback_counted_then_shared_again(
    replicas: Replicas,
) -> None:
    before = replicas.metric("tiergate_shared_state_fallback_total", what="budget")
    codes: list[int] = []
    codes += [a.status_code for a in asyncio.run(_burst(replicas, "busy", 40, "pre"))]
    replicas.redis.stop()  # SIGKILL
    codes += [a.status_code for a in asyncio.run(_burst(replicas, "busy", 40, "down"))]
    down = [httpx.get(b + "/readyz").json()["budgets"] for b in replicas.bases]
    assert replicas.metric("tiergate_shared_state_fallback_total", what="budget") > before
    assert replicas.metric("tiergate_shared_state_fallback_total", what="rate_limit") > 0
    replicas.redis.start()  # a fresh Redis (no persistence): shared accounts start over
    time.sleep(1.2)  # the replicas' back-off before trying Redis again (real processes)
    codes += [a.status_code for a in asyncio.run(_burst(replicas, "busy", 40, "post"))]
    assert codes.count(200) == 120 and not [c for c in codes if c >= 500], codes
    assert all(not d["shared_now"] for d in down)
    for base in replicas.bases:
        assert httpx.get(base + "/readyz").json()["budgets"]["shared_now"]
        usage = httpx.get(base + "/v1/usage", headers=auth(replicas.keys["busy"])).json()
        # The fresh Redis holds the spend since it came back, and what each replica
        # spent while it was down (paid in when it returned): at least the last burst.
        assert usage["budget"]["shared"] and usage["budget"]["spent"] >= 0.4
    logs = replicas.logs()
    assert "budgets per process until it is back" in logs and "budgets shared again" in logs
    assert all(k not in logs for k in replicas.keys.values())
