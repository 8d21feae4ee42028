"""SIGTERM on a real `tiergate serve` process: drain, finish what is in flight, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tiergate.testing import free_port

pytestmark = pytest.mark.integration

CONFIG = """
service: drained
tiers:
  - name: only
    model: {kind: callable, target: "tiergate.testing:slow_keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
    timeout_ms: 20000
    # A model that sleeps 2 s must not run inline on the event loop ('auto' would: its
    # start-up probe has no "[slow]" and uses almost no CPU), or the loop could not answer
    # /readyz or refuse new requests while it runs.
    executor: thread
default_deadline_ms: 20000
drain_grace_s: 10
"""


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TIERGATE_TEST_SLOW_S": "2.0"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiergate", "serve", str(tmp_path / "config.yaml"),
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # a real process: poll until it answers
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        answers: list[httpx.Response] = []
        inflight = threading.Thread(
            target=lambda: answers.append(
                httpx.post(base + "/v1/predict", json={"input": "[slow] a great film"}, timeout=30)
            )
        )
        inflight.start()
        time.sleep(0.5)  # the request is inside the (2 s) model call
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(base + "/readyz", timeout=5)
        late = httpx.post(base + "/v1/predict", json={"input": "too late"}, timeout=5)
        inflight.join(timeout=30)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "serve.log").read_text(errors="replace")
    assert ready.status_code == 503, output
    assert ready.status_code == 503 and ready.json()["error"]["type"] == "draining"
    assert late.status_code == 503 and late.json()["error"]["type"] == "draining"
    assert int(late.headers["retry-after"]) >= 1
    assert answers and answers[0].status_code == 200 and answers[0].json()["output"] == "positive"
    assert code == 0
