"""The dashboard and the API docs in a real headless Chromium, driven over DevTools.

A real uvicorn serves a real service on loopback; traffic flows while the page polls
``/dashboard/data``; the test reads the rendered numbers from the DOM (stable ids,
raw values in ``data-value``) and records every request the browser makes, so a page
that reaches for the internet fails here. ``TIERGATE_SAVE_SCREENSHOT=1`` writes the
screenshot to ``docs/dashboard.png`` (else to the test's tmp dir).

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped without it unless ``CI``
is set.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tiergate.api import create_app
from tiergate.config import load_config
from tiergate.service import Service
from tiergate.testing import serve_in_thread

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
service: dashboard-demo
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.000002
    threshold: 0.9
  - name: accurate
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
slo: {p99_ms: 50, accuracy: 0.8, availability: 0.999, cost_per_1k: 0.05}
monitor: {shadow: {rate: 1.0, max_per_s: 50}}
"""

TEXTS = [
    "a great, gorgeous film", "a film about a dog", "awful, boring mess", "the best fun",
    "dull and flat", "it is a movie", "wonderful, moving, brilliant", "tedious",
]  # fmt: skip

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (CI must run it: see .ci/run)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


class Browser:
    """One headless Chromium process and one page, spoken to over the DevTools protocol."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.profile = profile
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--no-first-run",
             "--no-default-browser-check", "--metrics-recording-only", "--mute-audio",
             f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--window-size=1280,1000", "about:blank"],
            stdout=self._log, stderr=self._log,
        )  # fmt: skip
        try:
            self.ws = self._connect()
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Network.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280, height=1000, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _connect(self) -> ClientConnection:
        # Chromium writes its DevTools port here once it listens (a real process: poll).
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start: {self.output()[-2000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        page = next(t for t in targets if t["type"] == "page")
        ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        return self._stack.enter_context(ws)

    def output(self) -> str:
        self._log.seek(0)
        return str(self._log.read().decode(errors="replace"))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command; return its result (events read meanwhile are kept)."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        """Poll ``expression`` in the page until it is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression!r} (last: {value!r})")
            time.sleep(0.1)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def value(self, element_id: str) -> str:
        """``data-value`` of the element with ``element_id`` ('' when the page shows none)."""
        return str(
            self.evaluate(
                f"(document.getElementById({json.dumps(element_id)}) || {{dataset: {{}}}})"
                ".dataset.value || ''"
            )
        )

    def text(self, element_id: str) -> str:
        return str(self.evaluate(f"document.getElementById({json.dumps(element_id)}).textContent"))

    def requested(self) -> list[str]:
        """Every URL the page asked for so far."""
        self.evaluate("1")  # drain pending events
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors of the page so far."""
        self.evaluate("1")
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(str(e["params"]["exceptionDetails"]))
            elif e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append(str(e["params"]["args"]))
        return out

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._stack.close()
        if self.proc.poll() is None:  # by PID
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(CONFIG)
    service = Service.from_config(load_config(path))
    with serve_in_thread(create_app(service)) as base:
        yield base


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(_chromium(), tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


class Traffic:
    """Predict requests from a background thread until stopped (a mix that escalates)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                # Mostly new texts (cache misses reach the tiers), some repeats (hits).
                text = TEXTS[i % len(TEXTS)] + ("" if i % 4 == 0 else f" #{i}")
                r = client.post(
                    "/v1/predict", json={"input": text}, headers={"x-request-id": f"r{i}"}
                )
                self.sent += 1
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text}")
                self._stop.wait(0.005)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def _offsite(urls: list[str]) -> list[str]:
    return [
        u for u in urls
        if urlsplit(u).scheme in ("http", "https", "ws", "wss")
        and urlsplit(u).hostname not in _LOOPBACK
    ]  # fmt: skip


def test_dashboard_shows_live_traffic(server: str, browser: Browser, tmp_path: Path) -> None:
    browser.goto(server + "/dashboard")
    browser.wait_for("document.getElementById('status').dataset.value === 'live'")
    assert browser.text("service-name") == "dashboard-demo"
    assert browser.text("drift-state") == "ok"

    with Traffic(server) as traffic:
        rps = float(
            browser.wait_for(
                "Number(document.getElementById('rps-total').dataset.value) > 0 && document.getElementById('rps-total').dataset.value"
            )
        )
        assert rps > 0
        browser.wait_for("Number(document.getElementById('rps-fast').dataset.value) > 0")
        browser.wait_for("document.getElementById('p99-ms').dataset.value !== ''")
        # Shadow re-answers arrive in the background: the fast tier's estimate appears.
        browser.wait_for("document.getElementById('shadow-fast').dataset.value !== ''")
        esc = float(browser.value("escalation-rate"))
        p50, p99 = float(browser.value("p50-ms")), float(browser.value("p99-ms"))
        save = os.environ.get("TIERGATE_SAVE_SCREENSHOT") == "1"
        if save:  # for the README: let the sparklines fill a little first
            browser.wait_for("Number(document.getElementById('updated').dataset.value) >= 12", 40)
        shot = browser.screenshot(
            REPO / "docs" / "dashboard.png" if save else tmp_path / "dashboard.png"
        )
    assert traffic.sent > 0 and not traffic.failures, traffic.failures[:3]
    assert 0 < esc < 1  # some inputs are confident, some not
    assert 0 < p50 <= p99
    assert (
        browser.value("breaker-fast") == "closed" and browser.value("breaker-accurate") == "closed"
    )
    assert browser.value("threshold-fast") == "0.9"
    assert float(browser.value("shadow-fast")) > 0.5
    assert browser.value("p99-slo") == "50"
    assert browser.value("cost-slo") == "0.05"
    assert browser.evaluate("document.getElementById('drift-banner').hidden") is True
    assert shot.stat().st_size > 10_000
    assert browser.errors() == []
    requested = browser.requested()
    assert any(u.endswith("/dashboard/data") for u in requested)
    assert _offsite(requested) == []


def test_swagger_ui_and_redoc_render_offline(server: str, browser: Browser) -> None:
    browser.goto(server + "/docs")
    # Swagger UI fetched the schema and drew the operations: its bundle ran.
    assert browser.wait_for("document.querySelectorAll('.opblock').length") >= 2
    assert "/v1/predict" in browser.evaluate("document.body.innerText")
    browser.goto(server + "/redoc")
    browser.wait_for("document.body.innerText.includes('Classify one input')")
    assert browser.errors() == []
    requested = browser.requested()
    assert any(u.endswith("/openapi.json") for u in requested)
    assert _offsite(requested) == []


# The last tier disagrees with every answer the fast tier accepts: the shadow estimate
# falls below the target, the alarm shows on the page, and auto-tighten moves the
# fast tier's threshold (each change listed).
ALARM_CONFIG = """
service: dashboard-alarm
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.000002
    threshold: 0.55
  - name: accurate
    model: {kind: callable, target: "tiergate.testing:contrary_keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
slo: {p99_ms: 50, accuracy: 0.9, availability: 0.999, cost_per_1k: 0.05}
monitor:
  window: 50
  shadow: {rate: 1.0, max_per_s: 1000}
  drift: {min_samples: 10, auto_tighten: true, tighten_step: 0.1}
"""


@pytest.fixture
def alarm_server(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "config.yaml"
    path.write_text(ALARM_CONFIG)
    service = Service.from_config(load_config(path))
    with serve_in_thread(create_app(service)) as base:
        yield base


def test_dashboard_raises_the_drift_alarm(alarm_server: str, browser: Browser) -> None:
    browser.goto(alarm_server + "/dashboard")
    browser.wait_for("document.getElementById('status').dataset.value === 'live'")
    assert browser.text("drift-state") == "ok"
    with Traffic(alarm_server) as traffic:
        browser.wait_for("document.getElementById('drift-state').dataset.value === '1'")
        browser.wait_for("Number(document.getElementById('threshold-changes').dataset.value) > 0")
    assert traffic.sent > 0 and not traffic.failures, traffic.failures[:3]
    assert browser.text("drift-state") == "ALARM"
    assert browser.evaluate("document.getElementById('drift-banner').hidden") is False
    assert "fast" in browser.evaluate("document.getElementById('drift-alarms').innerText")
    assert float(browser.value("threshold-fast")) > 0.55
    # The shadow agreement when the alarm was raised: each tightening restarts the tier's
    # window (answers accepted under the old threshold say nothing of the new one), so the
    # live cell may show no estimate until new samples arrive; the alarm keeps its own.
    raised = browser.evaluate(
        "document.querySelector('#drift-alarms li[data-kind=accuracy]').dataset.estimate"
    )
    assert float(raised) < 0.5
    assert browser.errors() == []
