"""Semantic-cache benchmark: lookup cost by cache size, and hit / false-hit rates on the
demo's evaluation pairs at a calibrated threshold, judged by the real cascade.

Writes bench/results/cache.json (and the reusable pair file next to the demo data,
``<demo>/cache-pairs.jsonl``, if missing). Run: `.venv/bin/python bench/cache.py`.
The demo must be built (`tiergate demo build`). Timings are on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tiergate.cache import (
    NumpyIndex,
    Pair,
    SemanticCache,
    build_pair_file,
    calibrate_threshold,
    cascade_answers,
    evaluate_threshold,
    load_minilm_embedder,
    make_namespace,
    read_pairs,
    score_pairs,
)
from tiergate.config import load_config, tiergate_home
from tiergate.errors import CalibrationError
from tiergate.service import Service

ROOT = Path(__file__).resolve().parent.parent
DIM = 384


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), 4) for q in (50, 90, 99)} | {
        "mean": round(float(ms.mean()), 4)
    }


def lookup_cost(sizes: list[int]) -> list[dict[str, Any]]:
    """Search cost of the numpy index alone (random unit vectors: cost does not depend on
    them), with the default BLAS threads and with one (multi-threaded sgemv waits for a
    free core when the machine is busy)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    out = []
    for size in sizes:
        index = NumpyIndex[bytes](capacity=size)
        for s in range(0, size, 10_000):
            block = rng.standard_normal((min(10_000, size - s), DIM)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            index.add(block, [b"x"] * len(block))
        queries = rng.standard_normal((256, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        rounds = max(100, min(1000, 20_000_000 // size))
        row: dict[str, Any] = {
            "entries": size, "dim": DIM, "matrix_mb": round(size * DIM * 4 / 1e6, 1),
            "rounds": rounds,
        }  # fmt: skip
        for label, threads in (("default_blas_threads", None), ("one_blas_thread", 1)):
            with threadpool_limits(threads, "blas"):
                single = []
                for i in range(rounds):
                    t0 = time.perf_counter()
                    index.search(queries[i % 256 : i % 256 + 1])
                    single.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for i in range(8):
                    index.search(queries[32 * i : 32 * (i + 1)])
                batch32 = (time.perf_counter() - t0) / 256
            row[label] = {
                "search_ms": percentiles(single),
                "search_ms_per_query_in_batch_of_32": round(batch32 * 1000, 4),
            }
        out.append(row)
        print(
            f"  {size:>7} entries: search p50 {row['default_blas_threads']['search_ms']['p50']} ms"
            f" (1 BLAS thread: {row['one_blas_thread']['search_ms']['p50']} ms)",
            flush=True,
        )
    return out


async def end_to_end_lookup(sizes: list[int], embedder: Any) -> list[dict[str, Any]]:
    """Embedding + search through SemanticCache.lookup: inline or offloaded to a worker
    thread, with the default BLAS threads or one."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    texts = [f"review snippet number {i}, a fine and moving film" for i in range(64)]
    out = []
    for size in sizes:
        index = NumpyIndex[bytes](capacity=size)
        block = rng.standard_normal((size, DIM)).astype(np.float32)
        index.add(block / np.linalg.norm(block, axis=1, keepdims=True), [b"x"] * size)
        row: dict[str, Any] = {"entries": size}
        for blas in (None, 1):
            for offload in (False, True):
                cache = SemanticCache(embedder, 0.999, index=index, offload=offload)
                times = []
                with threadpool_limits(blas, "blas"):
                    for i in range(170):
                        t0 = time.perf_counter()
                        await cache.lookup(texts[i % 64])
                        times.append(time.perf_counter() - t0)
                where = "offloaded" if offload else "inline"
                row[f"{where}_{'1_blas_thread' if blas else 'default_blas'}"] = percentiles(
                    times[20:]
                )
        out.append(row)
        print(f"  {size:>7} entries end to end: {row}", flush=True)
    return out


def accuracy_on_hits(
    pairs: list[Pair], answers: dict[str, str | None], hits: np.ndarray[Any, Any]
) -> dict[str, float | int]:
    """Gold-label accuracy on the hits: the cascade's fresh answer vs the cached one."""
    rows = [(p, h) for p, h in zip(pairs, hits, strict=True) if h and p.query_label]
    fresh = [answers[p.query] == p.query_label for p, _ in rows]
    cached = [answers[p.reference] == p.query_label for p, _ in rows]
    return {
        "n": len(rows),
        "fresh_cascade": round(float(np.mean(fresh)), 4) if rows else 0.0,
        "cached_answer": round(float(np.mean(cached)), 4) if rows else 0.0,
    }


def group_of(pair: Pair) -> str:
    # Perturbations of one snippet, and neighbour pairs touching it, share a group, so
    # the calibration and held-out halves never share a snippet.
    return pair.source.split("~")[0] if pair.kind == "neighbour" else pair.source


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.json")
    ap.add_argument("--pairs", type=Path, default=None)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--bounds", default="0.01,0.02,0.05", help="false-hit bounds to calibrate")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    demo: Path = args.demo
    if not (demo / "manifest.json").is_file():
        raise SystemExit(f"build the demo first: tiergate demo build --dir {demo}")
    sizes = [int(s) for s in args.sizes.split(",")]

    t0 = time.perf_counter()
    embedder = load_minilm_embedder(demo / "minilm")
    print("semantic lookup cost (numpy brute force):", flush=True)
    cost = lookup_cost(sizes)
    e2e = await end_to_end_lookup(sizes, embedder)

    pairs_path: Path = args.pairs or demo / "cache-pairs.jsonl"
    pairs = (
        read_pairs(pairs_path)
        if pairs_path.is_file()
        else build_pair_file(
            [demo / "data" / "calibration.jsonl", demo / "data" / "test.jsonl"],
            embedder,
            pairs_path,
            per_text=2,
            seed=args.seed,
        )
    )
    print(f"{len(pairs)} pairs in {pairs_path}: {dict(Counter(p.kind for p in pairs))}", flush=True)

    service = Service.from_config(load_config(demo / "config.yaml"))
    versions = {t.name: t.version for t in service.tiers}
    ns = make_namespace(service.config.service, versions, service.cascade.calibration_version)
    digest = hashlib.sha256(ns.encode() + pairs_path.read_bytes()).hexdigest()[:16]
    answers_path = pairs_path.with_name(f"{pairs_path.stem}-answers-{digest}.json")
    t_cascade = time.perf_counter()
    cached = answers_path.is_file()
    try:
        if cached:  # same pairs, same models and calibration
            answers = orjson.loads(answers_path.read_bytes())
        else:
            texts = [t for p in pairs for t in (p.query, p.reference)]
            answers = await cascade_answers(service, texts)
            answers_path.write_bytes(orjson.dumps(answers))
    finally:
        service.close()
    t_cascade = time.perf_counter() - t_cascade
    print(f"cascade answers for {len(answers)} texts in {t_cascade:.1f}s", flush=True)

    groups = sorted({group_of(p) for p in pairs})
    rng = np.random.default_rng(args.seed)
    cal_groups = set(rng.permutation(groups)[: len(groups) // 2].tolist())
    cal = [p for p in pairs if group_of(p) in cal_groups]
    held = [p for p in pairs if group_of(p) not in cal_groups]

    bounds = [float(b) for b in args.bounds.split(",")]
    results: dict[str, Any] = {}
    for mode in ("pool", "pair"):
        s_cal, f_cal = score_pairs(cal, embedder, answers, mode=mode)
        s_held, f_held = score_pairs(held, embedder, answers, mode=mode)
        usable = [p for p in held if answers.get(p.query) and answers.get(p.reference)]
        per_bound: dict[str, Any] = {}
        for bound in bounds:
            try:
                calib = calibrate_threshold(
                    s_cal, f_cal, bound=bound, confidence=args.confidence, seed=args.seed
                )
            except CalibrationError as exc:
                per_bound[str(bound)] = {"infeasible": exc.message, **exc.fields}
                print(f"[{mode}] bound {bound}: {exc.message}", flush=True)
                continue
            t = calib.threshold
            held_eval = evaluate_threshold(s_held, f_held, t, args.confidence)
            by_kind = {}
            for kind in sorted({p.kind for p in usable}):
                mask = np.array([p.kind == kind for p in usable])
                by_kind[kind] = evaluate_threshold(s_held[mask], f_held[mask], t, args.confidence)
            per_bound[str(bound)] = {
                "calibration": calib.to_dict(),
                "held_out": held_eval,
                "held_out_by_kind": by_kind,
                "held_out_accuracy_on_hits": accuracy_on_hits(usable, answers, s_held >= t)
                if mode == "pair"
                else None,
            }
            print(f"[{mode}] bound {bound}: threshold {t}, held-out {held_eval}", flush=True)
        grid = np.round(np.arange(0.8, 1.0, 0.01), 2)
        curve = [evaluate_threshold(s_held, f_held, float(t)) for t in grid]
        results[mode] = {
            "by_bound": per_bound,
            "held_out_curve": [
                {k: c[k] for k in ("threshold", "hit_rate", "false_hit_rate", "n_hits")}
                for c in curve
            ],
        }
    all_usable = [p for p in pairs if answers.get(p.query) and answers.get(p.reference)]
    disagreement = {
        kind: round(
            float(
                np.mean(
                    [answers[p.query] != answers[p.reference] for p in all_usable if p.kind == kind]
                )
            ),
            4,
        )
        for kind in sorted({p.kind for p in all_usable})
    }

    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "embedder": {
            "model": "paraphrase-MiniLM-L3-v2 int8 (per channel)",
            "version": embedder.version,
            "dim": embedder.dim,
        },
        "lookup_cost_numpy_index": cost,
        "lookup_cost_end_to_end": e2e,
        "pairs": {
            "path": str(pairs_path),
            "sha256": hashlib.sha256(pairs_path.read_bytes()).hexdigest(),
            "n": len(pairs),
            "by_kind": dict(Counter(p.kind for p in pairs)),
            "calibration_half": len(cal),
            "held_out_half": len(held),
        },
        "cascade": {
            "config": str(demo / "config.yaml"),
            "namespace": ns,
            "texts": len(answers),
            "answers_from": str(answers_path) if cached else "computed now",
            "seconds": round(t_cascade, 1),
        },
        "confidence": args.confidence,
        "cascade_disagreement_by_kind": disagreement,
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
