"""Served micro-batching: the accurate tier alone, batch 1 vs micro-batches, int8 and fp32.

For each encoder (the demo's int8 model, which the embedder runs row by row because its
results depend on batch mates, and the batch-invariant fp32 model, which it runs in
length-grouped batches) a one-tier service runs with ``max_batch: 1`` and with
``max_batch: 32``; fp32 also with the AIMD batch-size policy instead of the deadline
cut. Open-loop load from the demo's test texts in rising rate steps; the sustainable
rate is the highest step with p99 < 200 ms and no errors. The fp32 tier reuses the
int8 tier's head: throughput does not depend on the head's weights.

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
AIMD_MS = 100.0  # the AIMD policy's batch latency objective: half the p99 budget
VARIANTS = (  # encoder, max_batch, batching policy
    ("mpnet-int8.onnx", 1, "deadline"),
    ("mpnet-int8.onnx", 32, "deadline"),
    ("mpnet-fp32.onnx", 1, "deadline"),
    ("mpnet-fp32.onnx", 32, "deadline"),
    ("mpnet-fp32.onnx", 32, "aimd"),
)


def one_tier_config(demo: Path, encoder: str, max_batch: int, policy: str, out: Path) -> Path:
    cfg = demo_config_dict(demo)
    (tier,) = [t for t in cfg["tiers"] if t["name"] == "accurate"]
    tier["model"]["path"] = str(demo / encoder)
    tier["batching"] = {"max_batch": max_batch, "policy": policy, "aimd_target_ms": AIMD_MS}
    body = {
        "service": f"accurate-{encoder}-b{max_batch}",
        "tiers": [tier],
        "default_deadline_ms": 1000,
        "cache": {"exact": {"enabled": False}},
    }
    return write_config(body, out)


def sweep(
    url: str, bodies: list[bytes], rates: list[float], seconds: float, *, full: bool = False
) -> dict[str, Any]:
    asyncio.run(run_load(url, bodies, rate=rates[0], duration_s=2.0))  # warm-up
    steps = []
    best = 0.0
    failed = False  # the sustainable rate is the last step of an all-passing prefix
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
        failed = failed or not ok
        if failed and not full:
            break
        if not failed:
            best = rate
    return {"max_sustainable_rate": best, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo-dir", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--rates", default="20,30,40,50,60,70,80,90,100,110,120,140,160,180,200")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--only", default="", help="run only variants whose name contains this")
    ap.add_argument("--full-sweep", action="store_true", help="do not stop at a failed step")
    out = ROOT / "bench" / "results" / "batching_served.json"
    ap.add_argument("--out", type=Path, default=out)
    args = ap.parse_args()
    demo: Path = args.demo_dir.resolve()
    rates = [float(r) for r in args.rates.split(",")]
    texts, _ = read_labelled(demo / "data" / "test.jsonl")
    bodies = [orjson.dumps({"input": t}) for t in texts]
    tmp = Path(tempfile.mkdtemp())
    results: dict[str, Any] = {}
    for encoder, max_batch, policy in VARIANTS:
        name = f"{encoder.removesuffix('.onnx')}_max_batch_{max_batch}"
        name += "_aimd" if policy == "aimd" else ""
        if args.only not in name:
            continue
        print(name, file=sys.stderr)
        config = one_tier_config(demo, encoder, max_batch, policy, tmp / f"{name}.yaml")
        with served(config) as base:
            url = base + "/v1/predict"
            results[name] = sweep(url, bodies, rates, args.seconds, full=args.full_sweep)

    pairs = {
        "mpnet-int8": ("mpnet-int8_max_batch_32", "mpnet-int8_max_batch_1"),
        "mpnet-fp32": ("mpnet-fp32_max_batch_32", "mpnet-fp32_max_batch_1"),
        "mpnet-fp32_aimd": ("mpnet-fp32_max_batch_32_aimd", "mpnet-fp32_max_batch_1"),
    }
    gains = {
        key: results[a]["max_sustainable_rate"] / max(results[b]["max_sustainable_rate"], 1e-9)
        for key, (a, b) in pairs.items()
        if a in results and b in results
    }
    settings = {
        "rates": rates, "seconds_per_step": args.seconds, "p99_ms": P99_MS,
        "mode": "open loop", "data": "demo test split", "exact_cache": False,
        "aimd_target_ms": AIMD_MS, "default_deadline_ms": 1000,
    }  # fmt: skip
    body = {
        "benchmark": "batching_served",
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(["bench/batching_served.py", *sys.argv[1:]]),
        "machine": {"cpu_count": os.cpu_count()},
        "settings": settings,
        "batching_gain_at_p99_200ms": {k: round(v, 2) for k, v in gains.items()},
        "variants": results,
    }
    write_json_atomic(args.out, body)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
