"""Overload: find the demo's capacity, then offer 2× of it with admission control on.

1. Capacity: open-loop rates in steps; capacity is the highest rate with p99 within the
   deadline, no 5xx and < 1 % degraded answers (the policy's own answers, on time).
2. Overload: `admission.max_inflight` set by Little's law (capacity × deadline), then
   2× capacity offered for 10 s. Admitted requests must keep p99 within the deadline;
   the excess must get 429 (with Retry-After) quickly.
Writes bench/results/overload.json. Run: `.venv/bin/python bench/overload.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tiergate.bench import served
from tiergate.config import tiergate_home
from tiergate.demo import demo_config_dict, write_config
from tiergate.loadgen import run_load, summarize
from tiergate.offline import read_labelled

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_MS = 300


def config(demo: Path, out: Path, max_inflight: int | None) -> Path:
    cfg = demo_config_dict(demo)
    cfg["default_deadline_ms"] = DEADLINE_MS
    cfg["cache"] = {"exact": {"enabled": False}}  # measure the models, not the cache
    if max_inflight:
        cfg["admission"] = {"max_inflight": max_inflight}
    return write_config(cfg, out)


def run(base: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    res = asyncio.run(run_load(base + "/v1/predict", bodies, rate=rate, duration_s=seconds))
    s = summarize(res)
    s["degraded_share"] = sum(s["degraded"].values()) / max(s["completed"], 1)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--rates", default="50,100,150,200,250,300,350,400")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overload.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    texts, _ = read_labelled(args.demo / "data" / "test.jsonl")
    bodies = [orjson.dumps({"input": t}) for t in texts]
    steps = []
    capacity = 0.0
    with served(config(args.demo, tmp / "cap.yaml", None)) as base:
        run(base, bodies[-300:], 50, 2.0)  # warm-up
        for rate in [float(r) for r in args.rates.split(",")]:
            s = run(base, bodies, rate, args.seconds)
            ok = (s["latency_ms"]["p99"] <= DEADLINE_MS and s["errors_5xx"] == 0
                  and s["degraded_share"] < 0.01)  # fmt: skip
            lat = s["latency_ms"]
            steps.append({"rate": rate, "ok": ok, "p50": lat["p50"], "p99": lat["p99"],
                          "degraded_share": s["degraded_share"], "statuses": s["statuses"],
                          "error_reasons": s["error_reasons"],
                          "throughput": s["throughput_rps"]})  # fmt: skip
            print(steps[-1], flush=True)
            if not ok:
                break
            capacity = rate
    inflight = max(1, math.ceil(capacity * DEADLINE_MS / 1000.0))
    with served(config(args.demo, tmp / "over.yaml", inflight)) as base:
        run(base, bodies[-300:], 50, 2.0)
        s = run(base, bodies, 2 * capacity, 10.0)
    by = s["latency_ms_by_status"]
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/overload.py",
        "deadline_ms": DEADLINE_MS,
        "capacity_search": steps,
        "capacity_rps": capacity,
        "max_inflight": inflight,
        "overload": {
            "offered_rps": 2 * capacity,
            "statuses": s["statuses"],
            "admitted_p99_ms": by.get("200", {}).get("p99"),
            "admitted_p50_ms": by.get("200", {}).get("p50"),
            "shed_p50_ms": by.get("429", {}).get("p50"),
            "shed_p99_ms": by.get("429", {}).get("p99"),
            "degraded": s["degraded"],
            "errors_5xx": s["errors_5xx"],
            "error_reasons": s["error_reasons"],
            "transport_errors": s["transport_errors"],
        },
    }
    print(json.dumps(result["overload"], indent=1))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
