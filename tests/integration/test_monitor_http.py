"""Feedback and reload over real HTTP: a uvicorn server in a thread, and a real
`tiergate serve` process reloading on SIGHUP while it serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tiergate.api import create_app
from tiergate.artifact import FORMAT
from tiergate.config import CallableModelConfig, load_config
from tiergate.models import load_adapter
from tiergate.service import Service
from tiergate.testing import free_port, serve_in_thread

pytestmark = pytest.mark.integration

KEYWORDS = 'model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}'
CONFIG = f"""
service: watched
tiers:
  - name: fast
    {KEYWORDS}
    cost_per_call: 0.000001
  - name: accurate
    {KEYWORDS}
    cost_per_call: 0.0001
calibration: calibration.json
monitor:
  shadow: {{rate: 1.0, max_per_s: 100}}
"""


def _version() -> str:
    """The callable adapter's model version, as the service will load it."""
    cfg = CallableModelConfig(kind="callable", target="tiergate.testing:keyword_sentiment",
                              labels=("negative", "positive"))  # fmt: skip
    return load_adapter(cfg, name="fast").version


def _artifact(path: Path, threshold: float, version: str) -> None:
    v = _version()
    body = {
        "format": FORMAT, "version": version, "service": "watched", "method": "test",
        "thresholds": {"fast": threshold}, "temperatures": {"fast": 1.0, "accurate": 1.0},
        "model_versions": {"fast": v, "accurate": v}, "target_accuracy": 0.8,
    }  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)  # as `tiergate calibrate` writes it: never half a file


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    _artifact(tmp_path / "calibration.json", 0.7, "cal-one")
    (tmp_path / "config.yaml").write_text(CONFIG)
    service = Service.from_config(load_config(tmp_path / "config.yaml"))
    with serve_in_thread(create_app(service)) as base:
        yield base


def test_feedback_by_request_id(server: str) -> None:
    r = httpx.post(server + "/v1/predict", json={"input": "a great, fun film"},
                   headers={"X-Request-Id": "req-123"})  # fmt: skip
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-123"
    fb = httpx.post(server + "/v1/feedback", json={"request_id": "req-123", "label": "negative"})
    assert fb.status_code == 200, fb.text
    assert fb.json()["correct"] is False and fb.json()["output"] == "positive"
    gone = httpx.post(server + "/v1/feedback", json={"request_id": "nope", "label": "negative"})
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found"
    bad = httpx.post(server + "/v1/feedback", json={"request_id": "req-123", "label": "meh"})
    assert bad.status_code == 422 and "label must be one of" in bad.json()["error"]["message"]
    missing = httpx.post(server + "/v1/feedback", json={"label": "negative"})
    assert missing.status_code == 422
    batch = httpx.post(server + "/v1/predict/batch", json={"inputs": ["good", "bad"]},
                       headers={"X-Request-Id": "b1"})  # fmt: skip
    assert batch.status_code == 200
    assert httpx.post(server + "/v1/feedback",
                      json={"request_id": "b1/1", "label": "negative"}).json()["correct"]  # fmt: skip
    ready = httpx.get(server + "/readyz").json()
    labelled = ready["monitor"]["labelled"]
    assert labelled["received"] == 3 and labelled["unknown"] == 1
    assert ready["monitor"]["shadow"]["sent"] >= 1


def test_reload_under_load_fails_no_request(server: str, tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server, timeout=10) as client:
            i = 0
            while not stop.is_set():
                i += 1
                r = client.post("/v1/predict", json={"input": f"a good film {i % 7}"})
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                v = r.json()["calibration_version"]
                seen[v] = seen.get(v, 0) + 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            time.sleep(0.15)
            _artifact(tmp_path / "calibration.json", 0.6 + 0.05 * i, f"cal-{i}")
            r = httpx.post(server + "/admin/reload")
            assert r.status_code == 200, r.text
            assert r.json()["calibration_version"] == f"cal-{i}"
            after = httpx.post(server + "/v1/predict", json={"input": "a good film 0"}).json()
            assert after["calibration_version"] == f"cal-{i}"
        (tmp_path / "calibration.json").write_text("{broken")
        refused = httpx.post(server + "/admin/reload")
        assert refused.status_code == 409 and refused.json()["error"]["type"] == "config_error"
        time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert sum(seen.values()) > 50 and {"cal-0", "cal-5"} <= set(seen)
    assert httpx.get(server + "/readyz").json()["calibration_version"] == "cal-5"


def test_sighup_reloads_a_served_process(tmp_path: Path) -> None:
    _artifact(tmp_path / "calibration.json", 0.7, "cal-before")
    (tmp_path / "config.yaml").write_text(CONFIG)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiergate", "serve", str(tmp_path / "config.yaml"),
         "--port", str(port), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        _artifact(tmp_path / "calibration.json", 0.75, "cal-after")
        proc.send_signal(signal.SIGHUP)
        version = None
        for _ in range(50):
            version = httpx.get(base + "/readyz", timeout=5).json()["calibration_version"]
            if version == "cal-after":
                break
            time.sleep(0.1)
        assert version == "cal-after"
        assert proc.poll() is None  # SIGHUP did not stop it
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
