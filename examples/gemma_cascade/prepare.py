"""Write a tiergate config: the demo's fast tier, then Gemma-3-270M over llama.cpp's server.

    .venv/bin/python examples/gemma_cascade/prepare.py --out /tmp/gemma --url http://127.0.0.1:8082

reads the built demo (``tiergate demo build``; default ``$TIERGATE_HOME/demo``) and writes
``OUT/tiergate.yaml``: tier ``fast`` (the demo's NB n-gram model, in-process) → tier ``llm``
(``kind: openai-completions`` on ``URL``: a 4-shot prompt of demo TRAIN snippets, the
label words ``negative`` / ``positive``, token prices), and ``calibration:
OUT/calibration.json``, which ``tiergate calibrate`` writes. Gemma-3-270M is a base model:
its chat endpoint answers with empty content, so the tier reads ``top_logprobs`` of one
completion token. The prices are illustrative (0.10 / 0.40 per million prompt /
completion tokens), not a provider's offer.

What this example shows is the wiring (one calibration and one cost model across an
in-process model and a remote LLM), the token accounting and the failure handling; a
270M-parameter model is not more accurate than the fast tier here, and README says by
how much (``bench/results/remote.json``, part ``llm``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tiergate.config import tiergate_home
from tiergate.demo import demo_config_dict, write_config
from tiergate.offline import read_labelled

LABEL_WORDS = {"negative": "negative", "positive": "positive"}
PRICING = {"prompt_per_million": 0.10, "completion_per_million": 0.40}  # illustrative


def few_shot_prompt(demo: Path, shots: int = 4) -> str:
    """``shots`` short TRAIN snippets, alternating negative / positive, then the input slot."""
    texts, labels = read_labelled(demo / "data" / "train.jsonl")
    picked: dict[str, list[str]] = {"negative": [], "positive": []}
    for t, y in zip(texts, labels, strict=True):
        if 50 <= len(t) <= 110 and len(picked[y]) < shots // 2:
            picked[y].append(t)
    parts = []
    for i in range(shots // 2):
        for y in ("negative", "positive"):
            parts.append(f"Review: {picked[y][i]}\nSentiment: {y}\n\n")
    return "".join(parts) + "Review: {input}\nSentiment:"


def cascade_config(demo: Path, url: str, calibration: Path) -> dict[str, Any]:
    """The demo's config with its accurate tier replaced by the Gemma tier on ``url``."""
    cfg = demo_config_dict(demo)
    cfg.pop("slo", None)  # the demo's SLO is for MPNet; a CPU LLM takes ~1 s per call
    cfg["service"] = "review-sentiment-gemma"
    cfg["calibration"] = str(calibration)
    cfg["default_deadline_ms"] = 120_000
    cfg["tiers"] = [cfg["tiers"][0], {
        "name": "llm",
        "model": {"kind": "openai-completions", "base_url": url, "model": "gemma",
                  "prompt": few_shot_prompt(demo), "labels": LABEL_WORDS, "pricing": PRICING},
        "timeout_ms": 60_000,
    }]  # fmt: skip
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--url", default="http://127.0.0.1:8082", help="llama.cpp server base URL")
    args = ap.parse_args()
    if not (args.demo / "config.yaml").is_file():
        raise SystemExit(f"no built demo in {args.demo}: run `tiergate demo build` first")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    cfg = cascade_config(args.demo.resolve(), args.url, out / "calibration.json")
    print(write_config(cfg, out / "tiergate.yaml"))


if __name__ == "__main__":
    main()
