"""Interleaved A/B of one open-loop step: this checkout against another ``src``.

Serves the fast-tier path (the demo with its exact cache off, the same accepted input) or
the demo's test split, alternately from this checkout and from ``--other`` (e.g. a `git
worktree` of an earlier commit), ``--rounds`` times each, a fresh server per step; each
step is a 2-s wrk warm-up then `tiergate bench` open loop at ``--rate`` on up to 64
connections. Interleaving keeps this noisy machine's slow and fast phases out of the
comparison; the medians are what to read.

Run: `.venv/bin/python bench/open_ab.py --other /tmp/old --rate 5000` → bench/results/open_ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hotpath import find_wrk, lua_script, open_loop, serving
from tiergate.config import tiergate_home
from tiergate.demo import demo_config_dict, write_config

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--other", type=Path, required=True, help="checkout whose src/ is B")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--traffic", choices=("fast", "mixed"), default="fast")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "open_ab.json")
    args = ap.parse_args()
    demo = tiergate_home() / "demo"
    tmp = Path(tempfile.mkdtemp(prefix="open-ab-"))
    cfg = write_config(
        {**demo_config_dict(demo), "cache": {"exact": {"enabled": False}}}, tmp / "nc.yaml"
    )
    if args.traffic == "fast":
        data = tmp / "one.jsonl"
        data.write_text(json.dumps({"input": "a gorgeous, moving film", "label": "positive"}))
    else:
        data = demo / "data" / "test.jsonl"
    lua = lua_script([b'{"input": "a gorgeous, moving film"}'], tmp / "one.lua")
    wrk = find_wrk()
    serve = [sys.executable, "-m", "tiergate", "serve", "--log-level", "warning", str(cfg)]
    sides = {"this": None, "other": {"PYTHONPATH": str(args.other.resolve() / "src")}}
    steps: dict[str, list[dict[str, object]]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name, env in sides.items():
            with serving(serve, env) as server:
                warm = [wrk, "-t1", "-c16", "-d2s", "-s", str(lua), server.base + "/v1/predict"]
                subprocess.run(warm, capture_output=True, check=True)
                ol = open_loop(server, args.rate, args.duration, data, tmp, connections=64)
            steps[name].append(ol)
            print(f"round {r} {name:5s} p99 {ol['latency_ms']['p99']:.2f} ms  late "
                  f"{ol['late_sends']}  errors {ol['errors']}", flush=True)  # fmt: skip
    summary = {
        k: {"p99_ms": [s["latency_ms"]["p99"] for s in v],  # type: ignore[index]
            "median_p99_ms": statistics.median(s["latency_ms"]["p99"] for s in v),  # type: ignore[index]
            "errors": sum(s["errors"] for s in v)}  # type: ignore[misc]
        for k, v in steps.items()
    }  # fmt: skip
    result = {"argv": sys.argv[1:], "other": str(args.other), "summary": summary, "steps": steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary), f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
