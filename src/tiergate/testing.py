"""In-memory parts for tests and examples: a manual clock and scripted models.

Shipped in the package (as httpx ships a mock transport) so users can test their
own configs without mocking tiergate's internals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from tiergate.errors import TiergateError
from tiergate.models.base import Probabilities

__all__ = ["ManualClock", "ScriptedModel", "keyword_sentiment", "serve_in_thread"]


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
