"""Remote tiers against real peers: an LLM tier, V2 batching and the gateway's overhead.

In one run, on this machine, all on loopback (issue 10's "Done when" measurements):

1. **llm**: Gemma-3-270M (Q4_K_M GGUF) behind llama.cpp's OpenAI-compatible server as an
   `openai-completions` tier with a 4-shot prompt built from demo TRAIN snippets. On
   ``--n-llm`` demo test snippets, called directly with `OpenAIClassifier` (sequential, so
   latency is one call's): accuracy, mean prompt/completion tokens, p50/p99 per call. Then
   the cascade demo fast tier → gemma: `tiergate calibrate` on the first ``--n-calib``
   calibration snippets (target: the tier's measured accuracy minus ``--margin``; if
   refused, once more at the bound the refusal names) and `tiergate evaluate` on the same
   test snippets (report.json: accuracy, escalation share, cost per 1k requests). Token
   prices are illustrative (0.10 / 0.40 per million prompt / completion tokens). A 270M
   model shows wiring and token accounting, not accuracy.
2. **v2_batching**: MLServer (mlserver-sklearn) serving TF-IDF + LogisticRegression trained
   on the demo TRAIN split; a cascade `keyword_sentiment` (threshold 0.999, so nearly every
   request escalates) → `v2-infer`, served by `tiergate serve` and driven closed-loop by
   wrk at each of ``--connections``, with the remote tier's `batching.max_batch` 32 vs 1.
   Upstream calls per request from `tiergate_batch_size_count/sum{tier="heavy"}`.
3. **overhead**: one tier only (a V2 model), exact cache off: ``--n-overhead`` sequential
   `POST /v1/predict` through tiergate vs as many `POST /v2/models/sentiment/infer` straight
   to the upstream with the same single text, each over one kept-alive connection
   (http.client), alternating one call each way so drift hits both alike. Two upstreams:
   a minimal V2 endpoint (Starlette, a fixed answer: steady, so the gateway's share shows)
   and MLServer. Added p50 = gateway p50 − direct p50, split into the part inside the
   service (its reported latency − direct) and its HTTP face (the rest).

Everything runs on the same 2-core machine (load generator, gateway, peer), so absolute
numbers carry that noise. Results are written after each part, so a partial run keeps
what it measured.

Run: `.venv/bin/python bench/remote.py` (about 10–15 minutes) → bench/results/remote.json.
``--parts llm,v2_batching,overhead`` picks parts; peers from `scripts/peers/*.sh`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import yaml

from tiergate.config import OpenAICompletionsModelConfig, TokenPricing, tiergate_home
from tiergate.demo import demo_config_dict, write_config
from tiergate.models.openai import OpenAIClassifier
from tiergate.offline import read_labelled
from tiergate.testing import LlamaServer, MLServer, PeerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LLAMA_PY = ROOT / ".venv-llama" / "bin" / "python"
GGUF = ROOT / ".peers" / "gemma-3-270m-q4_k_m.gguf"
MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"


def _example(name: str) -> Any:
    """``examples/NAME/prepare.py`` as a module: the bench runs the examples as shipped."""
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / name / "prepare.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEMMA = _example("gemma_cascade")
REMOTE_ACCURATE = _example("remote_accurate")
LABEL_WORDS = GEMMA.LABEL_WORDS
PRICING = GEMMA.PRICING
V2_MODEL = "sentiment"

WRK_ERRORS = ("connect", "read", "write", "status", "timeout")
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# --- small helpers ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def lat_summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
            "mean": float(np.mean(ms)), "max": float(np.max(ms))}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def write_jsonl(texts: list[str], labels: list[str], path: Path) -> Path:
    path.write_text(
        "".join(
            json.dumps({"input": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)
        )
    )
    return path


def save(results: dict[str, Any], out: Path, part: str | None = None) -> None:
    """Write the results so far; ``part`` (just measured) gets today's date in part_dates."""
    if part is not None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        results.setdefault("part_dates", {})[part] = now
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


class Served:
    """`tiergate serve CONFIG` on a free loopback port, stopped by PID."""

    def __init__(self, config: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tiergate", "serve", str(config), "--port", str(self.port),
             "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tiergate serve exited: {self.output()[-3000:]}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("tiergate serve did not become ready")
            time.sleep(0.3)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.base + "/metrics", timeout=10).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(("tiergate_batch_size_", "tiergate_requests_total")):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@contextmanager
def serving(config: Path) -> Iterator[Served]:
    server = Served(config)
    try:
        yield server
    finally:
        server.stop()


# --- 1. Gemma-3-270M as a tier ---------------------------------------------------------------


async def llm_direct(base_url: str, prompt: str, texts: list[str]) -> dict[str, Any]:
    cfg = OpenAICompletionsModelConfig(
        kind="openai-completions", base_url=base_url, model="gemma", prompt=prompt,
        labels=LABEL_WORDS, pricing=TokenPricing(**PRICING),
    )  # fmt: skip
    tier = OpenAIClassifier(cfg, name="llm")
    try:
        await tier.start()
        rows, tokens, ms = [], [], []
        for t in texts:
            t0 = time.perf_counter()
            scored = await tier.apredict_batch([t])
            ms.append((time.perf_counter() - t0) * 1000.0)
            rows.append(scored.probs[0])
            assert scored.tokens is not None
            tokens.append(scored.tokens[0])
        return {"probs": np.array(rows), "tokens": np.array(tokens), "ms": ms,
                "labels": tier.labels}  # fmt: skip
    finally:
        await tier.aclose()


def run_cli(argv: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "tiergate", *argv], capture_output=True, text=True, check=False
    )
    return {
        "command": "tiergate " + " ".join(argv),
        "exit_code": p.returncode,
        "stdout": p.stdout.strip()[-2000:],
        "stderr_tail": re.sub(r"\s+", " ", p.stderr.strip())[-800:],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def part_llm(args: argparse.Namespace, demo: Path, tmp: Path) -> dict[str, Any]:
    texts, labels = read_labelled(demo / "data" / "test.jsonl")
    texts, labels = texts[: args.n_llm], labels[: args.n_llm]
    ctexts, clabels = read_labelled(demo / "data" / "calibration.jsonl")
    test_file = write_jsonl(texts, labels, tmp / "llm-test.jsonl")
    calib_file = write_jsonl(ctexts[: args.n_calib], clabels[: args.n_calib], tmp / "llm-cal.jsonl")
    prompt = GEMMA.few_shot_prompt(demo)
    out: dict[str, Any] = {
        "peer": "llama-cpp-python[server] 0.3.36 (llama.cpp), --n_threads 2, Gemma-3-270M Q4_K_M",
        "prompt": prompt,
        "labels": LABEL_WORDS,
        "pricing_per_million": {**PRICING, "note": "illustrative prices, not a real offer"},
        "n_test": len(texts),
        "test_data": f"first {len(texts)} lines of the demo's data/test.jsonl",
    }
    with LlamaServer(str(LLAMA_PY), str(GGUF)) as llama:
        t0 = time.perf_counter()
        got = asyncio.run(llm_direct(llama.url, prompt, texts))
        wall = time.perf_counter() - t0
        pred = [got["labels"][i] for i in got["probs"].argmax(axis=1)]
        acc = float(np.mean([p == y for p, y in zip(pred, labels, strict=True)]))
        tokens = got["tokens"]
        cost = [(p * PRICING["prompt_per_million"] + c * PRICING["completion_per_million"]) / 1e6
                for p, c in tokens]  # fmt: skip
        out["direct"] = {
            "how": "OpenAIClassifier.apredict_batch([text]) one call at a time (sequential)",
            "accuracy": acc,
            "predicted_share": {lab: pred.count(lab) / len(pred) for lab in got["labels"]},
            "gold_share": {lab: labels.count(lab) / len(labels) for lab in got["labels"]},
            "mean_prompt_tokens": float(tokens[:, 0].mean()),
            "mean_completion_tokens": float(tokens[:, 1].mean()),
            "mean_cost_per_call": float(np.mean(cost)),
            "cost_per_1k_calls": 1000.0 * float(np.mean(cost)),
            "latency_ms": lat_summary(got["ms"]),
            "wall_s": wall,
        }
        print(f"llm direct: acc {acc:.3f}, tokens {tokens[:, 0].mean():.1f}+"
              f"{tokens[:, 1].mean():.2f}, p50 {pct(got['ms'], 50):.0f} ms, "
              f"p99 {pct(got['ms'], 99):.0f} ms", flush=True)  # fmt: skip

        cal_out = tmp / "llm-calibration.json"  # the file calibrate is about to write
        cfg = GEMMA.cascade_config(demo, llama.url, cal_out)  # examples/gemma_cascade
        config = write_config(cfg, tmp / "llm-cascade.yaml")
        out["cascade_config"] = cfg
        out["calibration_data"] = f"first {args.n_calib} lines of the demo's calibration split"
        target = round(max(0.5, acc - args.margin), 3)
        attempts = []
        for _ in range(2):
            cal_out.unlink(missing_ok=True)
            r = run_cli(["calibrate", str(config), "--data", str(calib_file),
                         "--target-accuracy", str(target), "--out", str(cal_out)])  # fmt: skip
            r["target_accuracy"] = target
            attempts.append(r)
            print(f"calibrate target {target}: exit {r['exit_code']} "
                  f"{r['stdout'] or r['stderr_tail']}", flush=True)  # fmt: skip
            if r["exit_code"] == 0:
                break
            m = re.search(r"certify is\s+([\d.]+)", r["stderr_tail"])
            if not m or float(m.group(1)) <= 0.0:
                break
            target = round(float(m.group(1)) - 0.002, 4)
            if not 0 < target < 1:
                break
        out["calibrate"] = attempts
        if cal_out.exists():
            body = json.loads(cal_out.read_text())
            out["calibration_artifact"] = {
                k: body.get(k) for k in ("thresholds", "temperatures", "achieved", "costs",
                                         "target_accuracy", "confidence", "method")
            }  # fmt: skip
            report = tmp / "llm-report"
            r = run_cli(["evaluate", str(config), "--data", str(test_file), "--report",
                         str(report)])  # fmt: skip
            out["evaluate"] = r
            print(f"evaluate: exit {r['exit_code']} {r['stdout'] or r['stderr_tail']}", flush=True)
            if (report / "report.json").exists():
                rep = json.loads((report / "report.json").read_text())
                op = rep["operating_point"]
                out["cascade"] = {
                    "accuracy": op["accuracy"],
                    "escalation_share": op["escalation_rate"],
                    "cost_per_1k": op["cost_per_1k"],
                    "thresholds": op["thresholds"],
                    "tier_shares": op["tier_shares"],
                    "tier_accuracy_alone": {t["name"]: t["accuracy"] for t in rep["tiers"]},
                    "baselines": {k: rep["baselines"][k] for k in ("always_first", "always_last")},
                }
    return out


# --- 2./3. a V2 model on MLServer ------------------------------------------------------------


def v2_model_repo(demo: Path, repo: Path) -> dict[str, Any]:
    """TF-IDF + LogisticRegression on the demo TRAIN split, as an mlserver-sklearn model."""
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels = read_labelled(demo / "data" / "train.jsonl")
    pipe = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(C=4.0, max_iter=1000),
    ).fit(texts, labels)
    model_dir = repo / V2_MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipe, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": V2_MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "content_type": "str"},
    }))  # fmt: skip
    ttexts, tlabels = read_labelled(demo / "data" / "test.jsonl")
    acc = float(np.mean(pipe.predict(ttexts) == np.asarray(tlabels)))
    return {"model": "TfidfVectorizer(1-2 grams, min_df 2, sublinear) + LogisticRegression(C=4)",
            "trained_on": f"demo train split ({len(texts)} snippets)",
            "classes": [str(c) for c in pipe.classes_],
            "test_accuracy_in_process": acc}  # fmt: skip


def v2_tier(base_url: str, max_batch: int) -> dict[str, Any]:
    return {
        "name": "heavy",
        "model": {"kind": "v2-infer", "base_url": base_url, "model": V2_MODEL,
                  "input_name": "text", "output_name": "predict_proba",
                  "labels": ["negative", "positive"]},
        "cost_per_call": 0.0004,
        "timeout_ms": 5000,
        "batching": {"max_batch": max_batch},
    }  # fmt: skip


def lua_script(bodies: list[bytes], path: Path) -> Path:
    items = ",\n".join("[==[" + b.decode() + "]==]" for b in bodies)
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"local bodies = {{{items}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\nend\n" + LUA_DONE
    )
    return path


def wrk_run(wrk: str, url: str, lua: Path, connections: int, seconds: int) -> dict[str, Any]:
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(json.loads(out.strip().splitlines()[-1]))


def part_v2_batching(
    args: argparse.Namespace, mlserver_url: str, mlserver_pid: int, tmp: Path, texts: list[str]
) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"skipped": "wrk not found (apt-get install wrk)"}
    bodies = [orjson.dumps({"input": t}) for t in texts[:2000]]
    lua = lua_script(bodies, tmp / "v2.lua")
    conns = [int(c) for c in args.connections.split(",")]
    out: dict[str, Any] = {
        "load": f"wrk -t1 -cN -d{args.duration}s closed loop, {len(bodies)} distinct demo "
        "test snippets cycled, exact cache off",
        "cascade": "fast: callable tiergate.testing:keyword_sentiment (threshold 0.999) -> "
        "heavy: v2-infer on MLServer",
        "runs": [],
    }
    for max_batch in (32, 1):
        cfg = {
            "service": "v2-batching",
            "tiers": [
                {"name": "fast", "threshold": 0.999, "cost_per_call": 0.000001,
                 "model": {"kind": "callable", "target": "tiergate.testing:keyword_sentiment",
                           "labels": ["negative", "positive"]}},
                v2_tier(mlserver_url, max_batch),
            ],
            "cache": {"exact": {"enabled": False}},
        }  # fmt: skip
        config = write_config(cfg, tmp / f"v2-batch{max_batch}.yaml")
        with serving(config) as server:
            wrk_run(wrk, server.base + "/v1/predict", lua, 16, 2)  # warm up
            for c in conns:
                m0 = server.metrics()
                cpu_gw, cpu_ml = cpu_seconds(server.proc.pid), cpu_seconds(mlserver_pid)
                s = wrk_run(wrk, server.base + "/v1/predict", lua, c, args.duration)
                cpu_gw = cpu_seconds(server.proc.pid) - cpu_gw
                cpu_ml = cpu_seconds(mlserver_pid) - cpu_ml
                m1 = server.metrics()
                key = 'tiergate_batch_size_{}{{tier="heavy"}}'
                calls = m1.get(key.format("count"), 0.0) - m0.get(key.format("count"), 0.0)
                rows = m1.get(key.format("sum"), 0.0) - m0.get(key.format("sum"), 0.0)
                n = s["requests"]
                run = {
                    "max_batch": max_batch,
                    "connections": c,
                    "requests": n,
                    "rps": n / (s["duration_us"] / 1e6),
                    "latency_ms": {k: s[k] / 1000.0 for k in ("p50", "p90", "p99", "max")},
                    "errors": {k: s[k] for k in WRK_ERRORS if s[k]},
                    "heavy_upstream_calls": calls,
                    "heavy_rows": rows,
                    "escalated_share": rows / n if n else None,
                    "mean_upstream_batch": rows / calls if calls else None,
                    "upstream_calls_per_request": calls / n if n else None,
                    "gateway_cpu_ms_per_request": 1000.0 * cpu_gw / max(n, 1),
                    "mlserver_cpu_ms_per_request": 1000.0 * cpu_ml / max(n, 1),
                }
                print(f"v2 max_batch={max_batch:2d} c={c:3d}: {run['rps']:7.0f} req/s, p50 "
                      f"{run['latency_ms']['p50']:.1f} ms, p99 {run['latency_ms']['p99']:.1f} "
                      f"ms, calls/req {run['upstream_calls_per_request']:.3f}, "
                      f"errors {run['errors']}", flush=True)  # fmt: skip
                out["runs"].append(run)
    by = {(r["max_batch"], r["connections"]): r["rps"] for r in out["runs"]}
    out["speedup_32_vs_1"] = {str(c): by[(32, c)] / by[(1, c)] for c in conns if by.get((1, c))}
    return out


def _keepalive_post(conn: http.client.HTTPConnection, path: str, body: bytes) -> bytes:
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status}: {data[:300]!r}")
    return data


# The smallest V2 server there is (Starlette + uvicorn, one fixed answer): an upstream whose
# own cost is known and steady, so the gateway's share is not lost in a model server's noise.
MINIMAL_V2 = """
import sys, orjson, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
port, model = int(sys.argv[1]), sys.argv[2]
async def infer(request):
    n = orjson.loads(await request.body())["inputs"][0]["shape"][0]
    out = {"name": "predict_proba", "shape": [n, 2], "datatype": "FP64", "data": [0.3, 0.7] * n}
    return Response(orjson.dumps({"model_name": model, "outputs": [out]}),
                    media_type="application/json")
async def ready(request):
    return Response(b"{}", media_type="application/json")
app = Starlette(routes=[Route(f"/v2/models/{model}/infer", infer, methods=["POST"]),
                        Route("/v2/health/ready", ready),
                        Route(f"/v2/models/{model}/ready", ready)])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def _overhead_pair(upstream_port: int, gw_port: int, text: str, n: int) -> dict[str, Any]:
    """``n`` sequential calls each way, alternating one direct, one through the gateway."""
    direct_body = orjson.dumps({
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}],
        "outputs": [{"name": "predict_proba"}],
    })  # fmt: skip
    gw_body = orjson.dumps({"input": text})
    direct_path = f"/v2/models/{V2_MODEL}/infer"
    direct = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
    gw = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
    for _ in range(300):  # warm up both paths and connections
        _keepalive_post(direct, direct_path, direct_body)
        _keepalive_post(gw, "/v1/predict", gw_body)
    d_ms: list[float] = []
    g_ms: list[float] = []
    server_ms: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        _keepalive_post(direct, direct_path, direct_body)
        t1 = time.perf_counter()
        body = orjson.loads(_keepalive_post(gw, "/v1/predict", gw_body))
        t2 = time.perf_counter()
        d_ms.append((t1 - t0) * 1000.0)
        g_ms.append((t2 - t1) * 1000.0)
        server_ms.append(float(body["latency_ms"]))
    direct.close()
    gw.close()
    d, g, inside = lat_summary(d_ms), lat_summary(g_ms), lat_summary(server_ms)
    return {
        "direct_ms": d,
        "through_tiergate_ms": g,
        "tiergate_reported_latency_ms": inside,
        "added_p50_ms": g["p50"] - d["p50"],
        "added_p99_ms": g["p99"] - d["p99"],
        "added_mean_ms": g["mean"] - d["mean"],
        # where the added time is: inside the service (cascade, tier, upstream client) vs
        # its HTTP face (uvicorn, parsing, the answer's encoding, the extra socket hop)
        "added_inside_service_p50_ms": inside["p50"] - d["p50"],
        "added_http_face_p50_ms": g["p50"] - inside["p50"],
        "last_response": body,
    }


def part_overhead(
    args: argparse.Namespace, mlserver_url: str, tmp: Path, text: str
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "how": "sequential requests over one kept-alive http.client connection per path, "
        "alternating one direct call and one through tiergate (so drift hits both alike); "
        "same single text; tiergate: one v2-infer tier, exact cache off, all features on",
        "text": text,
        "target_added_p50_ms": 1.0,
    }
    script = tmp / "minimal_v2.py"
    script.write_text(MINIMAL_V2)
    port = free_port()
    minimal = PeerProcess([sys.executable, str(script), str(port), V2_MODEL], port,
                          "/v2/health/ready", ready_timeout_s=60)  # fmt: skip
    with minimal:
        for name, url in (("minimal_v2", minimal.url), ("mlserver", mlserver_url)):
            cfg = {"service": "v2-overhead", "tiers": [v2_tier(url, 32)],
                   "cache": {"exact": {"enabled": False}}}  # fmt: skip
            config = write_config(cfg, tmp / f"v2-overhead-{name}.yaml")
            upstream_port = int(url.rsplit(":", 1)[1])
            with serving(config) as server:
                row = _overhead_pair(upstream_port, server.port, text, args.n_overhead)
            out[name] = row
            print(
                f"overhead vs {name}: direct p50 {row['direct_ms']['p50']:.2f} ms, via tiergate "
                f"p50 {row['through_tiergate_ms']['p50']:.2f} ms, added "
                f"{row['added_p50_ms']:.2f} ms (inside {row['added_inside_service_p50_ms']:.2f}"
                f", HTTP face {row['added_http_face_p50_ms']:.2f})",
                flush=True,
            )
    return out


# --- 4. the demo with its accurate tier on a model server ------------------------------------


def _operating_point(report: Path) -> dict[str, Any]:
    rep = json.loads((report / "report.json").read_text())
    op = rep["operating_point"]
    return {
        "accuracy": op["accuracy"],
        "escalation_share": op["escalation_rate"],
        "cost_per_1k": op["cost_per_1k"],
        "thresholds": op["thresholds"],
        "tier_accuracy_alone": {t["name"]: t["accuracy"] for t in rep["tiers"]},
    }


def _bench_rate(base: str, rate: float, seconds: float, data: Path, out: Path) -> dict[str, Any]:
    r = run_cli(["bench", base, "--rate", str(rate), "--duration", str(seconds),
                 "--data", str(data), "--out", str(out)])  # fmt: skip
    if r["exit_code"] != 0:
        return {"error": r}
    s = json.loads(out.read_text())
    keys = ("target_rate", "throughput_rps", "latency_ms", "statuses", "errors_5xx", "tiers",
            "degraded", "transport_errors")  # fmt: skip
    return {k: s[k] for k in keys}


def part_demo_remote(args: argparse.Namespace, demo: Path, tmp: Path) -> dict[str, Any]:
    """examples/remote_accurate: calibrate, evaluate and serve it beside the in-process demo."""
    out_dir = tmp / "remote-demo"
    out_dir.mkdir()
    port = free_port()
    config = REMOTE_ACCURATE.prepare(demo, out_dir, port, threads=args.ml_threads)
    demo_cal = json.loads((demo / "calibration.json").read_text())
    target = float(demo_cal["target_accuracy"])
    calib, test = demo / "data" / "calibration.jsonl", demo / "data" / "test.jsonl"
    local_cfg = demo_config_dict(demo)
    local_cfg.pop("slo", None)
    local = write_config(local_cfg, tmp / "local-demo.yaml")
    slo = yaml.safe_load((demo / "config.yaml").read_text()).get("slo") or {}
    rate = float(slo.get("rate", 50))
    res: dict[str, Any] = {
        "example": "examples/remote_accurate (MLServer custom runtime around the demo's ONNX "
        f"accurate tier; onnxruntime threads {args.ml_threads})",
        "target_accuracy": target,
        "slo": slo,
    }
    with MLServer(str(MLSERVER), str(out_dir / "mlserver"), port=port):
        cal_path = out_dir / "calibration.json"
        r = run_cli(["calibrate", str(config), "--data", str(calib),
                     "--target-accuracy", str(target), "--out", str(cal_path)])  # fmt: skip
        res["calibrate"] = r
        print(f"remote demo calibrate: exit {r['exit_code']} ({r['seconds']} s)", flush=True)
        if r["exit_code"] != 0:
            return res
        cal = json.loads(cal_path.read_text())
        keep = ("thresholds", "achieved", "costs")
        res["calibration"] = {"remote": {k: cal.get(k) for k in keep},
                              "in_process": {k: demo_cal.get(k) for k in keep}}  # fmt: skip
        for name, cfg in (("in_process", local), ("remote", config)):
            report = tmp / f"report-{name}"
            r = run_cli(["evaluate", str(cfg), "--data", str(test), "--report", str(report)])
            res.setdefault("evaluate", {})[name] = (
                _operating_point(report) if r["exit_code"] == 0 else {"error": r}
            )
            print(f"evaluate {name}: {res['evaluate'][name]}", flush=True)
        # At the SLO rate, and at half of it (this machine's accurate tier may not keep
        # up with the SLO rate in process either: then both show the same queue).
        for key, r in (("served_at_slo_rate", rate), ("served_at_half_slo_rate", rate / 2)):
            for name, cfg in (("in_process", local), ("remote", config)):
                with serving(cfg) as server:
                    res.setdefault(key, {})[name] = _bench_rate(
                        server.base, r, args.duration_slo, test, tmp / f"bench-{name}.json"
                    )
                lat = res[key][name].get("latency_ms", {})
                print(f"served {name} at {r:g}/s: p50 {lat.get('p50')} p99 {lat.get('p99')}",
                      flush=True)  # fmt: skip
    ev = res.get("evaluate", {})
    if "accuracy" in ev.get("remote", {}) and "accuracy" in ev.get("in_process", {}):
        alone = {k: v["tier_accuracy_alone"]["accurate"] for k, v in ev.items()}
        res["accurate_tier_alone_equal"] = alone["remote"] == alone["in_process"]
        res["accurate_tier_alone"] = alone
    return res


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="llm,v2_batching,overhead,demo_remote")
    ap.add_argument("--ml-threads", type=int, default=2, help="onnxruntime threads (MLServer)")
    ap.add_argument("--duration-slo", type=float, default=30, help="seconds at the SLO rate")
    ap.add_argument("--n-llm", type=int, default=200, help="test snippets for the LLM tier")
    ap.add_argument("--n-calib", type=int, default=300, help="calibration snippets (LLM)")
    ap.add_argument("--margin", type=float, default=0.07, help="calibrate target below LLM acc")
    ap.add_argument("--connections", default="16,64", help="wrk connections (V2 batching)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk step")
    ap.add_argument("--n-overhead", type=int, default=3000, help="requests per path")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "remote.json")
    args = ap.parse_args()
    parts = args.parts.split(",")
    demo = tiergate_home() / "demo"
    if not (demo / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "tiergate", "demo", "build"], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="remote-bench-"))
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.update({
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/remote.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count()},
        "note": "load generator, gateway and peer share one 2-core machine; other benchmark "
        "or chaos processes may have run concurrently (see 'noise')",
    })  # fmt: skip
    if "llm" in parts:
        if LLAMA_PY.exists() and GGUF.exists():
            results["llm"] = part_llm(args, demo, tmp)
        else:
            results["llm"] = {"skipped": "llama.cpp peer missing: scripts/peers/install_llama.sh"}
        save(results, args.out, "llm")
    if {"v2_batching", "overhead"} & set(parts):
        if not MLSERVER.exists():
            results["v2"] = {"skipped": "MLServer missing: scripts/peers/install_mlserver.sh"}
        else:
            repo = tmp / "mlrepo"
            results["v2_model"] = v2_model_repo(demo, repo)
            results["v2_model"]["peer"] = "MLServer 1.7.1 + mlserver-sklearn, parallel_workers 0"
            texts, _ = read_labelled(demo / "data" / "test.jsonl")
            with MLServer(str(MLSERVER), str(repo)) as ml:
                assert ml.proc is not None
                if "overhead" in parts:
                    results["overhead"] = part_overhead(args, ml.url, tmp, texts[0])
                    save(results, args.out, "overhead")
                if "v2_batching" in parts:
                    results["v2_batching"] = part_v2_batching(args, ml.url, ml.proc.pid, tmp, texts)
                    save(results, args.out, "v2_batching")
    if "demo_remote" in parts:
        if not MLSERVER.exists():
            results["demo_remote"] = {
                "skipped": "MLServer missing: scripts/peers/install_mlserver.sh"
            }
        else:
            results["demo_remote"] = part_demo_remote(args, demo, tmp)
    save(results, args.out, "demo_remote" if "demo_remote" in parts else None)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
