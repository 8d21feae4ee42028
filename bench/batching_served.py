"""Served micro-batching: the accurate tier alone, batch 1 vs micro-batches, int8 and fp32.

For each encoder (the demo's int8 model, which the embedder runs row by row because its
results depend on batch mates, and the batch-invariant fp32 model, which it runs in
length-grouped batches) a one-tier service runs with ``max_batch: 1`` and with
``max_batch: 32``. Open-loop load from the demo's test texts in rising rate steps; the
sustainable rate is the highest step with p99 < 200 ms and no errors. The fp32 tier
reuses the int8 tier's head: throughput does not depend on the head's weights.

    python bench/batching_served.py   →  bench/results/batching_served.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tiergate.artifact import write_json_atomic
from tiergate.bench import served
from tiergate.config import tiergate_home
from tiergate.demo import demo_config_dict, write_config
from tiergate.loadgen import run_load, summarize
from tiergate.offline import read_labelled

ROOT = Path(__file__).resolve().parents[1]
P99_MS = 200.0


def one_tier_config(demo: Path, encoder: str, max_batch: int, out: Path) -> Path:
    cfg = demo_config_dict(demo)
    (tier,) = [t for t in cfg["tiers"] if t["name"] == "accurate"]
    tier["model"]["path"] = str(demo / encoder)
    tier["batching"] = {"max_batch": max_batch}
    body = {
        "service": f"accurate-{encoder}-b{max_batch}",
        "tiers": [tier],
        "default_deadline_ms": 1000,
        "cache": {"exact": {"enabled": False}},
    }
    return write_config(body, out)


def sweep(url: str, bodies: list[bytes], rates: list[float], seconds: float) -> dict[str, Any]:
    asyncio.run(run_load(url, bodies, rate=rates[0], duration_s=2.0))  # warm-up
    steps = []
    best = 0.0
    for rate in rates:
        s = summarize(asyncio.run(run_load(url, bodies, rate=rate, duration_s=seconds)))
        ok = s["latency_ms"]["p99"] < P99_MS and set(s["statuses"]) == {"200"}
        steps.append({
            "rate": rate, "ok": ok, "p50_ms": s["latency_ms"]["p50"],
            "p99_ms": s["latency_ms"]["p99"], "throughput_rps": s["throughput_rps"],
            "statuses": s["statuses"],
        })  # fmt: skip
        p99 = s["latency_ms"]["p99"]
        print(f"  {rate:>6.0f} req/s  p99 {p99:7.1f} ms  ok={ok}", file=sys.stderr)
        if not ok:
            break
        best = rate
    return {"max_sustainable_rate": best, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo-dir", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--rates", default="20,30,40,50,60,70,80,90,100,110,120,140,160,180,200")
    ap.add_argument("--seconds", type=float, default=6.0)
    out = ROOT / "bench" / "results" / "batching_served.json"
    ap.add_argument("--out", type=Path, default=out)
    args = ap.parse_args()
    demo: Path = args.demo_dir.resolve()
    rates = [float(r) for r in args.rates.split(",")]
    texts, _ = read_labelled(demo / "data" / "test.jsonl")
    bodies = [orjson.dumps({"input": t}) for t in texts]
    tmp = Path(tempfile.mkdtemp())
    results: dict[str, Any] = {}
    for encoder in ("mpnet-int8.onnx", "mpnet-fp32.onnx"):
        for max_batch in (1, 32):
            name = f"{encoder.removesuffix('.onnx')}_max_batch_{max_batch}"
            print(name, file=sys.stderr)
            config = one_tier_config(demo, encoder, max_batch, tmp / f"{name}.yaml")
            with served(config) as base:
                results[name] = sweep(base + "/v1/predict", bodies, rates, args.seconds)
    gains = {
        enc: results[f"{enc}_max_batch_32"]["max_sustainable_rate"]
        / max(results[f"{enc}_max_batch_1"]["max_sustainable_rate"], 1e-9)
        for enc in ("mpnet-int8", "mpnet-fp32")
    }
    settings = {
        "rates": rates, "seconds_per_step": args.seconds, "p99_ms": P99_MS,
        "mode": "open loop", "data": "demo test split", "exact_cache": False,
    }  # fmt: skip
    body = {
        "benchmark": "batching_served",
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/batching_served.py",
        "machine": {"cpu_count": os.cpu_count()},
        "settings": settings,
        "batching_gain_at_p99_200ms": {k: round(v, 2) for k, v in gains.items()},
        "variants": results,
    }
    write_json_atomic(args.out, body)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
