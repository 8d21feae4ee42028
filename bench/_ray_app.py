"""Ray Serve side of bench/vs_ray.py: the accurate-tier model behind `@serve.batch`.

Run as a script (bench/vs_ray.py does this, in a subprocess of its own):

    .venv/bin/python bench/_ray_app.py --port 8123 --demo ~/.cache/tiergate/demo

Starts a local Ray (2 CPUs, no dashboard), Serve's HTTP proxy on 127.0.0.1:PORT and one
replica answering ``POST /predict`` ``{"input": "..."}`` with ``{"output", "confidence"}``.
Prints ``READY`` once the deployment is healthy, then serves until its stdin closes
(or SIGTERM/SIGINT), and shuts Serve and Ray down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

THREADS = 2  # intra-op threads of onnxruntime: the machine's core count
MAX_BATCH = 32
BATCH_WAIT_S = 0.005
MAX_ONGOING = 256  # Ray's default of 5 collapses under open-loop load (DESIGN §5)

# Set before Ray starts so the raylet and its workers inherit them.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402 - after the environment above
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=MAX_ONGOING,
    max_queued_requests=-1,
    ray_actor_options={"num_cpus": 1},
)
class AccurateClassifier:
    """The demo's accurate tier: MPNet int8 ONNX embeddings + a logistic-regression head."""

    def __init__(self, model: str, tokenizer: str, head: str) -> None:
        from tiergate.models.onnx import OnnxEmbeddingClassifier

        self._model = OnnxEmbeddingClassifier(
            Path(model), Path(tokenizer), Path(head), max_length=128, intra_op_threads=THREADS
        )
        self._labels = self._model.labels
        self.batch_sizes: dict[int, int] = {}

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _predict(self, texts: list[str]) -> list[dict[str, Any]]:
        n = len(texts)
        self.batch_sizes[n] = self.batch_sizes.get(n, 0) + 1
        # Off the replica's event loop, so requests keep queueing while the model runs.
        probs = await asyncio.to_thread(self._model.predict_batch, texts)
        best = probs.argmax(axis=1)
        return [
            {"output": self._labels[int(k)], "confidence": float(probs[i, k])}
            for i, k in enumerate(best)
        ]

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":  # batch-size histogram, for the report
            return JSONResponse({"batch_sizes": self.batch_sizes})
        if request.method != "POST":
            return JSONResponse({"error": "method not allowed"}, status_code=405)
        try:
            data = await request.json()
            text = data["input"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "expected {'input': '...'}"}, status_code=422)
        if not isinstance(text, str):
            return JSONResponse({"error": "input must be a string"}, status_code=422)
        return JSONResponse(await self._predict(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--demo", type=Path, required=True)
    args = ap.parse_args()
    demo = args.demo.expanduser().resolve()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        stop.set()

    ray.init(num_cpus=THREADS, include_dashboard=False, log_to_driver=False)
    try:
        quiet = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config=quiet)
        app = AccurateClassifier.options(logging_config=quiet).bind(  # type: ignore[attr-defined]
            str(demo / "mpnet-int8.onnx"),
            str(demo / "tokenizer.json"),
            str(demo / "accurate-head.joblib"),
        )
        serve.run(app, name="accurate", route_prefix="/predict")
        print("READY", flush=True)
        threading.Thread(target=watch_stdin, daemon=True).start()
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
