"""`tiergate serve --workers N`: real processes on one SO_REUSEPORT port.

Each test starts the supervisor as a subprocess and stops it (and, should anything go
wrong, every worker it started) by PID. Per-worker request counts are read from the
workers' own files in the multiprocess metrics folder (``counter_<pid>.db``), the same
files whose merge ``/metrics`` serves, so the HTTP API needs no worker header.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tiergate.errors import ConfigError
from tiergate.testing import RedisServer, free_port
from tiergate.workers import RestartPolicy

pytestmark = pytest.mark.integration

TIER = (
    '{kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}'
)
CONFIG = f"""
service: keywords
tiers:
  - name: fast
    model: {TIER}
    cost_per_call: 0.000001
    threshold: 0.9
  - name: accurate
    model: {TIER}
    cost_per_call: 0.0001
"""
START_TIMEOUT_S = 120.0  # two interpreters importing numpy/sklearn/fastapi on a busy 2-core box
READY = re.compile(r"(\d+)/\d+ workers ready on (\S+); metrics in (\S+)")
STARTED = re.compile(r"worker (\d+): pid (\d+) started")


class Running:
    """A supervisor subprocess and what its log says about its workers."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.proc = proc
        self.log = log
        self.port = port
        self.metrics_dir = Path()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> dict[int, int]:
        """Worker index → its latest pid."""
        return {int(i): int(p) for i, p in STARTED.findall(self.text())}

    def all_pids(self) -> set[int]:
        return {int(p) for _, p in STARTED.findall(self.text())}

    def wait_for(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)  # a real process: poll its log
        raise AssertionError(f"no {pattern!r} within {timeout_s} s:\n{self.text()}")


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"tiergate.workers" in cmdline and state != "Z"


@contextmanager
def supervisor(config: Path, port: int, *args: str, wait: bool = True) -> Iterator[Running]:
    """Run `tiergate serve CONFIG --workers 2 --port PORT`; stop it and its workers by PID."""
    log = Path(tempfile.mkdtemp()) / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tiergate", "serve", str(config), "--workers", "2",
             "--port", str(port), "--log-level", "warning", *args],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    run = Running(proc, log, port)
    try:
        if wait:
            run.metrics_dir = Path(run.wait_for(READY.pattern).group(3))
        yield run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in run.all_pids():  # only if the supervisor failed to stop them
            if _is_worker(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(log.parent, ignore_errors=True)


def write_config(tmp: Path, text: str = CONFIG) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def post(conn: http.client.HTTPConnection, text: str) -> dict[str, object]:
    conn.request("POST", "/v1/predict", body=orjson.dumps({"input": text}),
                 headers={"content-type": "application/json"})  # fmt: skip
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    out: dict[str, object] = orjson.loads(body)
    return out


def requests_by_pid(metrics_dir: Path) -> dict[int, float]:
    """``tiergate_requests_total`` per worker process, from its own counter file."""
    out: dict[int, float] = {}
    for f in metrics_dir.glob("counter_*.db"):
        pid = int(f.stem.split("_")[1])
        out[pid] = sum(
            s.value for m in MultiProcessCollector.merge([str(f)]) for s in m.samples
            if s.name == "tiergate_requests_total"
        )  # fmt: skip
    return out


def scrape(port: int) -> dict[str, float]:
    """One /metrics scrape on a fresh connection (so any worker may answer): sample sums."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            sums[s.name] = sums.get(s.name, 0.0) + s.value
    return sums


def open_connections(port: int, n: int) -> list[http.client.HTTPConnection]:
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(n)]
    for c in conns:
        c.connect()
    return conns


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = write_config(tmp_path_factory.mktemp("workers"))
    with supervisor(config, free_port()) as run:
        yield run


def test_kept_alive_connections_spread_and_metrics_add_up(served: Running) -> None:
    before, total_before = requests_by_pid(served.metrics_dir), scrape(served.port)
    conns = open_connections(served.port, 32)  # all open at once, each kept alive
    try:
        for _ in range(3):
            for c in conns:
                assert post(c, "a great, gorgeous film")["output"] == "positive"
    finally:
        for c in conns:
            c.close()
    after = requests_by_pid(served.metrics_dir)
    delta = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    assert set(delta) == set(served.pids().values())
    assert sum(delta.values()) == 96
    # Each connection's 3 requests stay on its worker; with a fair hash, P(a worker gets
    # fewer than 4 of the 32 connections) ≈ 3e-6.
    assert min(delta.values()) >= 12, delta
    for _ in range(6):  # whichever worker answers the scrape, it sees the whole service
        total = scrape(served.port)
        assert total["tiergate_requests_total"] - total_before["tiergate_requests_total"] == 96
        assert total["tiergate_ready"] == 1
        assert total["tiergate_inflight"] >= 0


def test_sigkilled_worker_is_restarted_and_port_keeps_answering(served: Running) -> None:
    victim = served.pids()[0]
    survivor = served.pids()[1]
    total_before = scrape(served.port)["tiergate_requests_total"]
    os.kill(victim, signal.SIGKILL)
    # Reaped means every thread is gone, so its listener is closed (a connection that
    # reached that listener's queue before is reset: the price of SIGKILL).
    served.wait_for(rf"worker 0: pid {victim} died", timeout_s=10)
    sent = 0
    for _ in range(20):  # new connections meanwhile all land on the survivor
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        post(conn, "a dull, tedious mess")
        conn.close()
        sent += 1
    m = served.wait_for(r"worker 0: pid (\d+) ready")
    reborn = int(m.group(1))
    assert reborn != victim and served.pids() == {0: reborn, 1: survivor}
    assert "died (signal SIGKILL); restarting" in served.text()
    before = requests_by_pid(served.metrics_dir)
    conns = open_connections(served.port, 32)
    for c in conns:
        post(c, "fun")
        c.close()
        sent += 1
    after = requests_by_pid(served.metrics_dir)
    assert after[reborn] - before.get(reborn, 0.0) > 0 and after[survivor] > before[survivor]
    # The dead worker's counters persist: totals never go backwards on a restart.
    assert scrape(served.port)["tiergate_requests_total"] == total_before + sent


def test_sigterm_stops_every_worker_gracefully(tmp_path: Path) -> None:
    with supervisor(write_config(tmp_path), free_port()) as run:
        workers = set(run.pids().values())
        idle = open_connections(run.port, 4)
        for c in idle:
            post(c, "great")  # kept alive and idle: must not hold the shutdown up
        t0 = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=15) == 0, run.text()
        elapsed = time.monotonic() - t0
        for c in idle:
            c.close()
        assert not any(_is_worker(pid) for pid in workers)
        assert not run.metrics_dir.exists()
        assert elapsed < 5, elapsed
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", run.port), timeout=1).close()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_workers_share_the_redis_cache(tmp_path: Path) -> None:
    redis = RedisServer(free_port())
    redis.start()
    try:
        text = CONFIG + f'cache: {{exact: {{backend: redis, redis_url: "{redis.url}"}}}}\n'
        with supervisor(write_config(tmp_path, text), free_port()) as run:
            first = open_connections(run.port, 1)[0]
            assert post(first, "a moving, brilliant film")["cache"] is None
            first.close()
            before = requests_by_pid(run.metrics_dir)
            conns = open_connections(run.port, 32)
            answers = [post(c, "a moving, brilliant film") for c in conns]
            for c in conns:
                c.close()
            after = requests_by_pid(run.metrics_dir)
        assert all(a["cache"] == "exact" for a in answers)
        # Both workers answered from the entry one of them stored.
        assert all(after[pid] > before.get(pid, 0.0) for pid in after), (before, after)
    finally:
        redis.stop()


def test_bad_config_fails_fast_with_the_typed_message(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG + "colour: blue\n")
    with supervisor(config, free_port(), wait=False) as run:
        assert run.proc.wait(timeout=60) == 2
        assert "colour: unknown key" in run.text() and "started" not in run.text()


def test_worker_crashing_at_start_up_stops_the_service(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG.replace(":keyword_sentiment", ":no_such_model", 1))
    with supervisor(config, free_port(), wait=False) as run:
        assert run.proc.wait(timeout=START_TIMEOUT_S) == 2
        text = run.text()
        assert "cannot import callable" in text and "failed to start (exit code 2)" in text
        assert len(STARTED.findall(text)) == 2  # no restart loop
        assert not any(_is_worker(pid) for pid in run.all_pids())


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with supervisor(write_config(tmp_path), port, wait=False) as run:
            assert run.proc.wait(timeout=60) == 2
            assert f"127.0.0.1:{port} is already in use" in run.text()


def test_restart_policy_backs_off_and_validates() -> None:
    policy = RestartPolicy(backoff_s=0.5, max_backoff_s=3.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ConfigError):
        RestartPolicy(backoff_s=2.0, max_backoff_s=1.0)
