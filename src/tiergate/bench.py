"""`tiergate bench`: load a running service (or one it starts) and write the numbers."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console

from tiergate.artifact import write_json_atomic
from tiergate.config import tiergate_home
from tiergate.errors import ConfigError, TiergateError
from tiergate.loadgen import LoadResult, run_load, summarize
from tiergate.offline import read_labelled

__all__ = ["request_bodies", "run_bench", "served"]


def request_bodies(texts: list[str], n: int, repeat_ratio: float, seed: int = 0) -> list[bytes]:
    """``n`` request bodies; a ``repeat_ratio`` share repeats an earlier input (for caches)."""
    rng = random.Random(seed)
    out: list[bytes] = []
    fresh = 0
    for _ in range(n):
        if out and rng.random() < repeat_ratio:
            out.append(out[rng.randrange(len(out))])
        else:
            out.append(orjson.dumps({"input": texts[fresh % len(texts)]}))
            fresh += 1
    return out


@contextmanager
def served(config: Path, *, ready_timeout_s: float = 600.0) -> Iterator[str]:
    """Start `tiergate serve CONFIG` on a free loopback port; yield its base URL; stop it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiergate", "serve", str(config), "--port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                msg = log.read().decode(errors="replace")
                raise TiergateError(f"server exited while starting: {msg.strip()[-2000:]}")
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TiergateError("server did not become ready in time")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # The load generator shares the machine with the server: uvloop (installed with
    # uvicorn[standard]) roughly halves its CPU per request.
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return None
    return uvloop.new_event_loop


def run_bench(
    target: str,
    *,
    rate: float | None,
    concurrency: int | None,
    duration_s: float,
    data: Path | None,
    repeat_ratio: float = 0.0,
    out: Path | None = None,
    console: Console | None = None,
    route: str = "/v1/predict",
    max_connections: int = 64,
) -> dict[str, Any]:
    """Run one load and return (and write) its summary."""
    data = data or tiergate_home() / "demo" / "data" / "test.jsonl"
    if not data.is_file():
        raise ConfigError(f"request data not found: {data} (build the demo or pass --data)")
    texts, _ = read_labelled(data)
    n = int((rate or 2000) * duration_s) + 1
    bodies = request_bodies(texts, min(n, 200_000), repeat_ratio)

    def progress(t: float, res: LoadResult) -> None:
        if console is not None:
            done = sum(res.statuses.values())
            errors = sum(c for s, c in res.statuses.items() if s >= 500)
            msg = f"  {t:5.1f}s  sent {res.sent}  done {done}  5xx {errors}"
            console.print(msg, highlight=False)

    def go(base: str) -> dict[str, Any]:
        with asyncio.Runner(loop_factory=_fast_loop()) as runner:
            res = runner.run(
                run_load(base.rstrip("/") + route, bodies, rate=rate, concurrency=concurrency,
                         duration_s=duration_s, progress=progress,
                         max_connections=max_connections)
            )  # fmt: skip
        return {"target": target, "data": str(data), "repeat_ratio": repeat_ratio,
                **summarize(res)}  # fmt: skip

    if target.startswith(("http://", "https://")):
        summary = go(target)
    else:
        with served(Path(target)) as base:
            summary = go(base)
    if out is not None:
        write_json_atomic(out, summary)
    return summary
