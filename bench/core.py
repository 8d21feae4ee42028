"""Core benchmark of the demo: accuracy, escalation, per-tier latency, HTTP latency.

Writes bench/results/core.json. Run: `.venv/bin/python bench/core.py` (builds the demo
first if needed). Timings are medians on this machine; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tiergate.bench import served
from tiergate.calibration import cascade_outcome
from tiergate.config import load_config, tiergate_home
from tiergate.demo import demo_config_dict, write_config
from tiergate.loadgen import run_load, summarize
from tiergate.offline import read_labelled, score_dataset
from tiergate.service import Service

ROOT = Path(__file__).resolve().parent.parent


def median_ms(fn: Any, items: list[Any], warmup: int = 5) -> float:
    for x in items[:warmup]:
        fn(x)
    times = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def batch_throughput(fn: Any, texts: list[str], batch: int = 32, rounds: int = 12) -> float:
    fn(texts[:batch])
    t0 = time.perf_counter()
    for r in range(rounds):
        fn(texts[r * batch : (r + 1) * batch])
    return batch * rounds / (time.perf_counter() - t0)


def fp32_vs_int8(demo: Path, test_texts: list[str], int8_acc: float) -> dict[str, Any]:
    """The same recipe with the fp32 encoder: its own head (C by CV on train), accuracy and
    batch-1 latency; plus both encoders' test accuracy at every C of the grid, so the
    comparison does not hinge on one hyper-parameter."""
    from sklearn.linear_model import LogisticRegression

    from tiergate.demo.train import HEAD_CS, embed_corpus, train_head
    from tiergate.models.onnx import OnnxSentenceEmbedder

    _, train_labels = read_labelled(demo / "data" / "train.jsonl")
    _, test_labels = read_labelled(demo / "data" / "test.jsonl")
    fp32 = OnnxSentenceEmbedder(demo / "mpnet-fp32.onnx", demo / "tokenizer.json")
    int8 = OnnxSentenceEmbedder(demo / "mpnet-int8.onnx", demo / "tokenizer.json")
    cache = demo / "embeddings-fp32.npz"
    if cache.exists():
        z = np.load(cache)
        x_train, x_test = z["train"], z["test"]
    else:
        x_train = embed_corpus(fp32, read_labelled(demo / "data" / "train.jsonl")[0])
        x_test = embed_corpus(fp32, test_texts)
        np.savez(cache, train=x_train, test=x_test)
    head, choice = train_head((x_train, train_labels))
    fp32_acc = float(np.mean(head.predict(x_test) == np.asarray(test_labels)))
    with np.load(demo / "embeddings-int8.npz") as z:
        i_train, i_test = z["train"], z["test"]
    by_c = {}
    for c in HEAD_CS:
        accs = {}
        for name, (xtr, xte) in {"fp32": (x_train, x_test), "int8": (i_train, i_test)}.items():
            lr = LogisticRegression(C=c, max_iter=5000).fit(xtr, train_labels)
            accs[name] = float(lr.score(xte, test_labels))
        by_c[str(c)] = {**accs, "loss_points": (accs["fp32"] - accs["int8"]) * 100}
    sample = test_texts[:200]
    lat_fp32 = median_ms(lambda t: fp32.embed([t]), sample)
    lat_int8 = median_ms(lambda t: int8.embed([t]), sample)
    cos = float(np.mean(np.sum(fp32.embed(sample[:64]) * int8.embed(sample[:64]), axis=1)))
    return {
        "fp32": {"test_accuracy": fp32_acc, "head_C": choice["C"], "batch1_median_ms": lat_fp32},
        "int8": {"test_accuracy": int8_acc, "batch1_median_ms": lat_int8},
        "speedup_batch1": lat_fp32 / lat_int8,
        "accuracy_loss_points": (fp32_acc - int8_acc) * 100,
        "mean_cosine_int8_vs_fp32": cos,
        "test_accuracy_by_head_C": by_c,
    }


def http_latency(base: str, texts: dict[str, list[str]], duration: float) -> dict[str, Any]:
    url = base + "/v1/predict"
    out: dict[str, Any] = {}
    for kind, items in texts.items():
        bodies = [orjson.dumps({"input": t}) for t in items]
        for c in (1, 16):
            res = asyncio.run(run_load(url, bodies, concurrency=c, duration_s=duration))
            s = summarize(res)
            out[f"{kind}_c{c}"] = {
                "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"],
                "throughput_rps": s["throughput_rps"], "statuses": s["statuses"],
                "tiers": s["tiers"],
            }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo-dir", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "core.json")
    ap.add_argument("--http-seconds", type=float, default=8.0)
    ap.add_argument("--skip-fp32", action="store_true")
    args = ap.parse_args()

    from tiergate.demo.build import build_demo

    config_path = build_demo(args.demo_dir)
    demo = config_path.parent
    service = Service.from_config(load_config(config_path))
    texts, labels = read_labelled(demo / "data" / "test.jsonl")
    print(f"scoring {len(texts)} test texts on every tier …", flush=True)
    scores = score_dataset(service.tiers, texts, labels)
    temps = [t.temperature for t in service.tiers]
    thresholds = [t.threshold for t in service.tiers[:-1]]
    conf = scores.confidences(temps)
    correct = scores.correct()
    costs = [t.cost_per_call for t in service.tiers]
    outcome = cascade_outcome(conf, correct, costs, [float(x or 0) for x in thresholds])
    result: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python bench/core.py",
        "test_n": len(texts),
        "tiers": {},
        "cascade": {
            "thresholds": thresholds,
            "accuracy": outcome.accuracy,
            "escalation_rate": outcome.escalation_rate,
            "answered_by_share": dict(
                zip(scores.tier_names, outcome.tier_shares(len(costs)), strict=True)
            ),
            "mean_cost": float(outcome.cost.mean()),
            "always_last_cost": float(sum(costs)),
        },
    }
    sample = texts[:200]
    for tier, ok in zip(service.tiers, correct, strict=True):
        result["tiers"][tier.name] = {
            "test_accuracy": float(ok.mean()),
            "batch1_median_ms": median_ms(lambda t, tier=tier: tier.predict_sync([t]), sample),
            "batch32_throughput_per_s": batch_throughput(tier.predict_sync, texts),
            "cost_per_call": tier.cost_per_call,
            "model_version": tier.version,
        }
        print(tier.name, result["tiers"][tier.name], flush=True)
    acc = result["tiers"][service.tiers[-1].name]["test_accuracy"]
    result["cascade"]["gap_to_last_tier_points"] = (acc - outcome.accuracy) * 100
    print("cascade", result["cascade"], flush=True)

    escalated = [t for t, a in zip(texts, outcome.answered_by, strict=True) if a > 0]
    kept = [t for t, a in zip(texts, outcome.answered_by, strict=True) if a == 0]
    fast = service.tiers[0]
    direct = median_ms(lambda t: fast.predict_sync([t]), kept[:300])
    service.close()
    # HTTP latency of the models, not of the exact cache (the load repeats inputs).
    cfg = {**demo_config_dict(demo), "cache": {"exact": {"enabled": False}}}
    uncached = write_config(cfg, Path(tempfile.mkdtemp()) / "core.yaml")
    with served(uncached) as base:
        print("HTTP load …", flush=True)
        http = http_latency(
            base, {"non_escalated": kept, "escalated": escalated}, args.http_seconds
        )
    result["http"] = http
    result["gateway_overhead"] = {
        "fast_tier_direct_batch1_median_ms": direct,
        "http_non_escalated_c1_p50_ms": http["non_escalated_c1"]["p50_ms"],
        "overhead_ms": http["non_escalated_c1"]["p50_ms"] - direct,
    }
    print("http", json.dumps(http, indent=1), flush=True)
    if not args.skip_fp32:
        print("fp32 vs int8 (embeds train+test with the fp32 encoder once) …", flush=True)
        result["quantization"] = fp32_vs_int8(demo, texts, acc)
        print(result["quantization"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
