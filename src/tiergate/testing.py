"""In-memory parts for tests and examples: a manual clock and scripted models.

Shipped in the package (as httpx ships a mock transport) so users can test their
own configs without mocking tiergate's internals.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.errors import TiergateError
from tiergate.models.base import Probabilities

__all__ = [
    "LlamaServer",
    "MLServer",
    "ManualClock",
    "PeerProcess",
    "RedisServer",
    "ScriptedModel",
    "contrary_keyword_sentiment",
    "free_port",
    "keyword_sentiment",
    "metric_total",
    "serve_in_thread",
    "slow_keyword_sentiment",
    "toy_sentiment_repo",
]


class ManualClock:
    """A clock that only moves when told to; ``clock()`` returns seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedModel:
    """A model whose answer per text is given by a function ``text -> P(labels[1])``.

    ``on_call`` runs before each batch (advance a clock, raise, count calls).

    >>> m = ScriptedModel(lambda t: 0.9 if "good" in t else 0.2)
    >>> m.predict_batch(["good", "bad"]).round(2).tolist()
    [[0.1, 0.9], [0.8, 0.2]]
    """

    def __init__(
        self,
        p_positive: Callable[[str], float],
        labels: Sequence[str] = ("negative", "positive"),
        *,
        version: str = "scripted-1",
        on_call: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self._p = p_positive
        self._labels = tuple(labels)
        self._version = version
        self._on_call = on_call
        self.calls: list[int] = []

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def version(self) -> str:
        return self._version

    def predict_batch(self, texts: Sequence[str]) -> Probabilities:
        self.calls.append(len(texts))
        if self._on_call is not None:
            self._on_call(texts)
        p = np.array([self._p(t) for t in texts], dtype=np.float64)
        return np.stack([1.0 - p, p], axis=1)


_POSITIVE = frozenset(
    ["good", "great", "gorgeous", "moving", "brilliant", "wonderful", "fun", "best", "love"]
)
_NEGATIVE = frozenset(
    ["bad", "awful", "boring", "dull", "worst", "mess", "flat", "tedious", "hate"]
)


def keyword_sentiment(texts: Sequence[str]) -> Probabilities:
    """A tiny deterministic sentiment model (``negative``, ``positive``) for configs in tests.

    Confidence grows with the keyword margin, so some inputs are certain and others not.
    """
    rows = []
    for text in texts:
        words = re.findall(r"[a-z]+", text.lower())
        margin = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
        p = 1.0 / (1.0 + np.exp(-1.5 * margin))
        rows.append((1.0 - p, p))
    return np.array(rows, dtype=np.float64).reshape(len(texts), 2)


def contrary_keyword_sentiment(texts: Sequence[str]) -> Probabilities:
    """:func:`keyword_sentiment` with the classes swapped: a last tier that disagrees with
    every answer, so shadow evaluation raises a drift alarm (dashboard and alarm tests)."""
    return keyword_sentiment(texts)[:, ::-1].copy()


def slow_keyword_sentiment(texts: Sequence[str]) -> Probabilities:
    """:func:`keyword_sentiment`, after ``$TIERGATE_TEST_SLOW_S`` seconds (default 1) when
    a text contains ``[slow]``: a model still busy when a test sends SIGTERM."""
    import os

    if any("[slow]" in t for t in texts):
        time.sleep(float(os.environ.get("TIERGATE_TEST_SLOW_S", "1.0")))
    return keyword_sentiment(texts)


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in a Prometheus text page whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI app on a real uvicorn server on a free loopback port; yield its URL."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise TiergateError("uvicorn failed to start")
            threading.Event().wait(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (racy by nature; fine for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start and wait until it answers PING."""
        redis = shutil.which("redis-server")
        if redis is None:
            raise TiergateError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [redis, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a real process: poll until it answers PING
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise TiergateError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Kill it (SIGKILL, by PID), as an outage would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # by PID; SIGKILL is what an outage looks like
            self.proc.wait(timeout=10)
        self.proc = None


class PeerProcess:
    """A real upstream server process on loopback, started and stopped by PID.

    ``ready_path`` is polled until it answers 200. :meth:`freeze`/:meth:`thaw` send
    SIGSTOP/SIGCONT (a hung upstream), :meth:`kill` SIGKILL (a crash); :meth:`start`
    again restarts it on the same port.
    """

    def __init__(self, argv: list[str], port: int, ready_path: str, *, cwd: str | None = None,
                 ready_timeout_s: float = 180.0) -> None:  # fmt: skip
        self.argv = argv
        self.port = port
        self.ready_path = ready_path
        self.cwd = cwd
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PeerProcess:
        import httpx

        if self._log is not None:  # a restart (kill, then start again): a fresh log
            self._log.close()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        out = self.output()
        self.stop()
        raise TiergateError(f"{self.argv[0]} did not become ready on {self.url}: {out[-2000:]}")

    def output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return str(self._log.read().decode(errors="replace"))

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PeerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def LlamaServer(python: str, model: str, port: int | None = None) -> PeerProcess:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python) serving a GGUF file."""
    port = port or free_port()
    argv = [python, "-m", "llama_cpp.server", "--model", model, "--model_alias", "gemma",
            "--host", "127.0.0.1", "--port", str(port), "--n_threads", "2",
            "--logits_all", "true", "--verbose", "false"]  # fmt: skip
    return PeerProcess(argv, port, "/v1/models")


def toy_sentiment_repo(repo: Path, name: str = "sentiment") -> Path:
    """An MLServer model repository in ``repo``: one TF-IDF + LR model trained on ten texts.

    Served by ``mlserver_sklearn`` with a BYTES (``str``) input and ``predict_proba`` out.
    """
    import json

    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model_dir = repo / name
    model_dir.mkdir()
    texts = ["great film", "wonderful acting", "a joy", "loved it", "superb",
             "awful film", "dull plot", "a bore", "hated it", "terrible"]  # fmt: skip
    y = ["positive"] * 5 + ["negative"] * 5
    joblib.dump(make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, y),
                model_dir / "model.joblib")  # fmt: skip
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "content_type": "str"},
    }))  # fmt: skip
    return repo


def MLServer(mlserver: str, model_dir: str, port: int | None = None) -> PeerProcess:
    """MLServer (KServe V2 REST) serving the model repository ``model_dir``.

    Writes ``settings.json`` there: loopback only, no gRPC/metrics ports in use, and
    ``parallel_workers: 0`` (its default inference pool failed to load models here).
    """
    import json

    port = port or free_port()
    settings = {"debug": False, "host": "127.0.0.1", "http_port": port,
                "grpc_port": free_port(), "metrics_port": free_port(),
                "metrics_endpoint": None, "parallel_workers": 0,
                "load_models_at_startup": True}  # fmt: skip
    with open(f"{model_dir}/settings.json", "w", encoding="utf-8") as f:
        json.dump(settings, f)
    return PeerProcess([mlserver, "start", model_dir], port, "/v2/health/ready")
