"""How much can batching raise the accurate tier's throughput on this machine at all?

Runs the demo's MPNet encoders (fp32 and int8) in-process, no server, and measures
texts/s at batch 1 and in batches of 32: random texts (what a server's queue holds) run
as one call padded to the longest text, the same random batches run the way
``OnnxSentenceEmbedder.embed`` runs them (split into calls of similar length), and
length-sorted batches (the best case, almost no padding). The int8 model is run batched
here even though its dynamic quantisation makes batched results depend on batch mates
(the server runs it row by row), so its numbers are a ceiling for any batching policy,
not something the server can ship.
The GEMM work per text (2 × weight elements of the constant-weight MatMuls × tokens)
turns rates into achieved GOP/s.

    python bench/batching_ceiling.py   →  bench/results/batching_ceiling.json
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tiergate.artifact import write_json_atomic
from tiergate.config import tiergate_home
from tiergate.models.onnx import OnnxSentenceEmbedder
from tiergate.offline import read_labelled

ROOT = Path(__file__).resolve().parents[1]


def matmul_weight_elements(path: Path) -> int:
    """Elements of the 2-D constant weights of MatMul nodes (int8 models: the fp32 twin's)."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul"):
            w = inits.get(node.input[1])
            if w is not None and len(w.dims) == 2:
                total += int(np.prod(w.dims))
    return total


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rates(emb: OnnxSentenceEmbedder, texts: list[str], batch: int) -> dict[str, float]:
    """texts/s at batch 1, in random batches and in length-sorted batches (median of 3)."""
    lengths = emb.token_lengths(texts)
    by_length = [t for _, t in sorted(zip(lengths, texts, strict=True))]
    emb.embed(texts[:batch])

    def run(groups: list[list[str]]) -> float:
        return len(texts) / min(_timed(lambda: [emb.embed(g) for g in groups]) for _ in range(3))

    def run_padded(groups: list[list[str]]) -> float:
        # one call per batch, padded to its longest text (what embed() did before grouping)
        calls = [emb._encode(g) for g in groups]
        return len(texts) / min(_timed(lambda: [emb._run(*c) for c in calls]) for _ in range(3))

    singles = [[t] for t in texts]
    rand = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    sort = [by_length[i : i + batch] for i in range(0, len(texts), batch)]
    return {
        "batch1": run(singles),
        "random_batches_one_padded_call": run_padded(rand),
        "random_batches_length_grouped": run(rand),
        "sorted_batches": run(sort),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo-dir", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    out = ROOT / "bench" / "results" / "batching_ceiling.json"
    ap.add_argument("--out", type=Path, default=out)
    args = ap.parse_args()
    demo: Path = args.demo_dir
    texts, _ = read_labelled(demo / "data" / "test.jsonl")
    sample = random.Random(0).sample(texts, args.texts)
    weights = matmul_weight_elements(demo / "mpnet-fp32.onnx")
    models: dict[str, Any] = {}
    for name in ("mpnet-fp32.onnx", "mpnet-int8.onnx"):
        # row_by_row=False: measure what batched execution could deliver, even where the
        # int8 model's results would depend on batch mates.
        emb = OnnxSentenceEmbedder(demo / name, demo / "tokenizer.json", row_by_row=False)
        r = rates(emb, sample, args.batch)
        lengths = emb.token_lengths(sample)
        tokens = float(np.mean(lengths))
        by_length = [t for _, t in sorted(zip(lengths, sample, strict=True))]
        batched = np.vstack(
            [emb.embed(by_length[i : i + args.batch]) for i in range(0, len(sample), args.batch)]
        )
        alone = np.vstack([emb.embed([t]) for t in by_length])
        gops = {k: v * 2 * weights * tokens / 1e9 for k, v in r.items()}
        models[name] = {
            "texts_per_s": {k: round(v, 1) for k, v in r.items()},
            "best_batching_gain": round(max(r.values()) / r["batch1"], 2),
            "gemm_gops": {k: round(v, 1) for k, v in gops.items()},
            # 1.0: batch-invariant; below: a text's embedding depends on its batch mates
            "batched_vs_alone_min_cosine": round(float((batched * alone).sum(axis=1).min()), 5),
        }
        print(name, models[name], file=sys.stderr)
    out = {
        "benchmark": "batching_ceiling",
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/batching_ceiling.py",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "settings": {"texts": args.texts, "batch": args.batch, "split": "test (random sample)"},
        "mean_tokens_per_text": round(tokens, 1),
        "matmul_weight_elements": weights,
        "gemm_gop_per_text": round(2 * weights * tokens / 1e9, 2),
        "models": models,
    }
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
