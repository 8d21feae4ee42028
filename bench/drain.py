"""SIGTERM under open-loop load: nothing sent before the signal is lost.

Serves the demo (a real `tiergate serve` process on loopback), sends an open-loop
stream of predict requests (scheduled by index, one connection pool, no retries),
sends SIGTERM half-way and keeps sending until the end. Each request is classified by
when it was sent relative to the signal:

* every request that reached the server must be answered 200, or 503 ``draining`` with
  ``Retry-After`` once the replica drains (``lost`` counts the others: a reset connection,
  a timeout, any other status);
* a refused connection once it has exited never reached it (behind a load balancer it
  goes to another replica).

Requests are classified as sent before or after the signal when they get a connection
slot, not when they were due; ``late_p99_ms`` says how far the client fell behind.

Also: the exit code and how long after the signal the process exited (within
``drain_grace_s``). ``--traffic fast`` repeats one input the fast tier accepts with the
exact cache off; ``--traffic mixed`` sends the test split (a share escalates to MPNet,
so requests are in flight in the slow tier at the signal).

    .venv/bin/python bench/drain.py --traffic mixed --rate 25
    .venv/bin/python bench/drain.py --traffic fast --rate 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tiergate.config import tiergate_home
from tiergate.demo import demo_config_dict, write_config
from tiergate.offline import read_labelled
from tiergate.testing import PeerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "drain.json"


async def _run(base: str, proc: subprocess.Popen[bytes], texts: list[str], rate: float,
               duration: float) -> dict[str, Any]:  # fmt: skip
    n = int(rate * duration)
    gap_ns = int(1e9 / rate)
    signal_at = n // 2
    rows: list[dict[str, Any]] = []
    signalled: dict[str, float] = {}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    # At most as many in flight as connections (wrk2's model: a request waiting for one
    # counts its latency from when it was due); httpx's pool slows down with thousands
    # of requests queued on it.
    slots = asyncio.Semaphore(256)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one(i: int) -> None:
            due = time.perf_counter()
            row: dict[str, Any] = {"i": i}
            try:
                async with slots:
                    # Sent, not due, before the signal: a request still queued here when
                    # the process exits was never sent to it.
                    row["before"] = "t" not in signalled
                    row["late_ms"] = (time.perf_counter() - due) * 1000
                    r = await client.post("/v1/predict", json={"input": texts[i % len(texts)]})
                row["status"] = r.status_code
                row["retry_after"] = r.headers.get("retry-after")
                if r.status_code != 200:
                    row["type"] = r.json().get("error", {}).get("type")
            except httpx.HTTPError as exc:
                row["status"] = type(exc).__name__
            row.setdefault("before", "t" not in signalled)
            row["latency_ms"] = (time.perf_counter() - due) * 1000
            rows.append(row)

        start = time.perf_counter_ns()
        tasks = []
        for i in range(n):
            delay = (start + i * gap_ns - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            if i == signal_at:
                proc.send_signal(signal.SIGTERM)  # by PID: the process this bench started
                signalled["t"] = time.perf_counter()
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    before = [r for r in rows if r["before"]]
    after = [r for r in rows if not r["before"]]
    # Lost: a request that reached the server and got neither an answer nor a 503
    # `draining` (a refused connection never reached it; a reset or a timeout did).
    lost = [r for r in rows if r["status"] not in (200, 503, "ConnectError")
            or (r["status"] == 503 and r.get("type") != "draining")]  # fmt: skip
    return {
        "requests": n, "rate_rps": rate, "duration_s": duration,
        "sent_before_signal": len(before), "sent_after_signal": len(after),
        "lost": len(lost), "lost_examples": lost[:5],
        "answered_200": sum(1 for r in rows if r["status"] == 200),
        "before_statuses": dict(Counter(str(r["status"]) for r in before)),
        "after_statuses": dict(Counter(str(r["status"]) for r in after)),
        "after_503_with_retry_after": sum(
            1 for r in after if r["status"] == 503 and r.get("retry_after")
            and r.get("type") == "draining"
        ),
        "before_p99_ms": statistics.quantiles([r["latency_ms"] for r in before], n=100)[98],
        # How far the client fell behind its schedule (waiting for one of its connections).
        "late_p99_ms": statistics.quantiles([r.get("late_ms", 0.0) for r in rows], n=100)[98],
        "signal_t": signalled["t"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traffic", choices=("fast", "mixed"), default="mixed")
    ap.add_argument("--rate", type=float, default=25.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--grace", type=float, default=10.0, help="drain_grace_s of the served config")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    demo = tiergate_home() / "demo"
    if not (demo / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "tiergate", "demo", "build"], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="drain-"))
    cfg = {**demo_config_dict(demo), "drain_grace_s": args.grace,
           "cache": {"exact": {"enabled": False}}}  # fmt: skip
    if args.traffic == "fast":
        texts = ["a gorgeous, moving film"]
    else:
        texts, _ = read_labelled(demo / "data" / "test.jsonl")
    path = write_config(cfg, tmp / "config.yaml")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    served = PeerProcess(
        [sys.executable, "-m", "tiergate", "serve", str(path), "--port", str(port),
         "--log-level", "warning"],
        port, "/readyz", ready_timeout_s=300,
    ).start()  # fmt: skip
    proc = served.proc
    assert proc is not None
    try:
        for t in texts[:50]:  # warm up
            httpx.post(base + "/v1/predict", json={"input": t}, timeout=30)
        ended: dict[str, float] = {}
        watcher = threading.Thread(
            target=lambda: (proc.wait(), ended.setdefault("t", time.perf_counter())), daemon=True
        )
        watcher.start()
        out = asyncio.run(_run(base, proc, texts, args.rate, args.duration))
        code = proc.wait(timeout=args.grace + 30)
        watcher.join(timeout=5)
        exited = ended["t"] - out.pop("signal_t")
    finally:
        served.stop()  # by PID, if it has not exited by itself
    out.update(traffic=args.traffic, grace_s=args.grace, exit_code=code,
               exited_after_signal_s=exited,
               date=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
    print(json.dumps({k: v for k, v in out.items() if k != "lost_examples"}))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.traffic] = out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
