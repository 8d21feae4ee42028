"""Write an MLServer model repository and a tiergate config for the demo, accurate tier remote.

    .venv/bin/python examples/remote_accurate/prepare.py --out /tmp/remote-demo [--port 8081]

reads the built demo (``tiergate demo build``; default ``$TIERGATE_HOME/demo``) and writes

- ``OUT/mlserver/``: ``settings.json`` (loopback; HTTP on the port, gRPC and metrics on
  the next two; ``parallel_workers: 0``)
  and ``accurate/`` (``model-settings.json`` pointing at the demo's ONNX model, tokenizer
  and head, plus a copy of ``runtime.py``): start it with
  ``.venv-mlserver/bin/mlserver start OUT/mlserver``;
- ``OUT/tiergate.yaml``: the demo's config with the accurate tier as a ``v2-infer`` tier on
  that server (labels in the head's column order; ``cost_per_call`` copied from the
  in-process tier's calibration so both cascades price the tier alike) and
  ``calibration: OUT/calibration.json``, which ``tiergate calibrate`` writes.

Nothing here needs MLServer or a network: it only writes files.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import joblib

from tiergate.config import tiergate_home
from tiergate.demo import demo_config_dict, write_config

HERE = Path(__file__).resolve().parent
MODEL = "accurate"


def prepare(demo: Path, out: Path, port: int, threads: int = 1) -> Path:
    cfg = demo_config_dict(demo)
    (tier,) = [t for t in cfg["tiers"] if t["name"] == "accurate"]
    local = tier["model"]
    labels = [str(c) for c in joblib.load(local["head"]).classes_]
    costs = json.loads((demo / "calibration.json").read_text())["costs"]

    repo = out / "mlserver"
    (repo / MODEL).mkdir(parents=True, exist_ok=True)
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": port + 1,
        "metrics_port": port + 2, "metrics_endpoint": None, "parallel_workers": 0,
        "load_models_at_startup": True, "debug": False,
    }, indent=2))  # fmt: skip
    (repo / MODEL / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "runtime.OnnxSentimentRuntime",
        "parameters": {"extra": {
            "model": local["path"], "tokenizer": local["tokenizer"], "head": local["head"],
            "max_length": local.get("max_length", 128), "threads": threads,
        }},
    }, indent=2))  # fmt: skip
    shutil.copy(HERE / "runtime.py", repo / MODEL / "runtime.py")

    tier["model"] = {
        "kind": "v2-infer", "base_url": f"http://127.0.0.1:{port}", "model": MODEL,
        "input_name": "text", "output_name": "probabilities", "labels": labels,
    }  # fmt: skip
    tier["cost_per_call"] = float(costs["accurate"])
    cfg["service"] = f"{cfg['service']}-remote-accurate"
    cfg["calibration"] = str(out / "calibration.json")
    return write_config(cfg, out / "tiergate.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads in MLServer")
    args = ap.parse_args()
    if not (args.demo / "config.yaml").is_file():
        raise SystemExit(f"no built demo in {args.demo}: run `tiergate demo build` first")
    args.out.mkdir(parents=True, exist_ok=True)
    print(prepare(args.demo.resolve(), args.out.resolve(), args.port, args.threads))


if __name__ == "__main__":
    main()
