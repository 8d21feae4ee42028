"""HTTP throughput and latency of the cache-hit path (memory and Redis stores).

Starts `tiergate serve` on the demo config with the exact cache on the given backend,
fills the cache with 500 test inputs, then drives only those inputs (every request an
exact hit) closed-loop at concurrency 1/16/64 with tiergate's load generator, and once
with wrk for a cross-check. The load generator runs on the same 2-core machine.
Merges the results into bench/results/cache.json under "http".
Run: `.venv/bin/python bench/cache_http.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from tiergate.bench import served
from tiergate.config import tiergate_home
from tiergate.demo import demo_config_dict, write_config
from tiergate.loadgen import run_load, summarize
from tiergate.offline import read_labelled
from tiergate.testing import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def demo_config(demo: Path, out: Path, cache: dict[str, Any]) -> Path:
    return write_config({**demo_config_dict(demo), "cache": {"exact": cache}}, out)


def wrk(url: str, bodies: list[bytes], connections: int, seconds: int) -> dict[str, Any] | None:
    exe = shutil.which("wrk")
    if exe is None:
        return None
    lua = Path(tempfile.mkdtemp()) / "post.lua"
    items = ",".join("[==[" + b.decode() + "]==]" for b in bodies[:200])
    lua.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"local bodies = {{{items}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #bodies + 1\n"
        "  return wrk.format('POST', nil, nil, bodies[i])\nend\n"
    )
    out = subprocess.run(
        [exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    return {"connections": connections, "rps": rps, "p50": lat.get("50"), "p99": lat.get("99")}


def run_backend(
    demo: Path, tmp: Path, backend: str, redis_url: str, seconds: float
) -> dict[str, Any]:
    cache = {"backend": backend, "redis_url": redis_url} if backend != "memory" else {}
    config = demo_config(demo, tmp / f"{backend}.yaml", cache)
    texts, _ = read_labelled(demo / "data" / "test.jsonl")
    texts = texts[:500]
    bodies = [orjson.dumps({"input": t}) for t in texts]
    out: dict[str, Any] = {"backend": backend, "distinct_inputs": len(texts), "closed_loop": []}
    with served(config) as base:
        for i in range(0, len(texts), 100):
            httpx.post(base + "/v1/predict/batch", json={"inputs": texts[i : i + 100]}, timeout=60)
        for c in (1, 16, 64):
            s = summarize(asyncio.run(run_load(base + "/v1/predict", bodies, concurrency=c,
                                               duration_s=seconds)))  # fmt: skip
            hits = s["cache"].get("exact", 0) / max(s["completed"], 1)
            row = {"concurrency": c, "rps": s["throughput_rps"], "p50_ms": s["latency_ms"]["p50"],
                   "p99_ms": s["latency_ms"]["p99"], "hit_share": hits,
                   "statuses": s["statuses"]}  # fmt: skip
            print(backend, row, flush=True)
            out["closed_loop"].append(row)
        out["wrk"] = wrk(base + "/v1/predict", bodies, 64, int(seconds))
        print(backend, "wrk", out["wrk"], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    results = [run_backend(args.demo, tmp, "memory", "", args.seconds)]
    redis = RedisServer(free_port())
    redis.start()
    try:
        results.append(run_backend(args.demo, tmp, "redis", redis.url, args.seconds))
    finally:
        redis.stop()
    body = json.loads(args.out.read_text()) if args.out.exists() else {}
    body["http"] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/cache_http.py",
        "note": "load generator on the same 2-core machine as the server",
        "backends": results,
    }
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
