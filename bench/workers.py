"""`serve --workers N`: the exact-cache-hit path with 1 vs 2 workers, measured with wrk.

Starts `tiergate serve` on the demo config (its exact cache is on by default) once with
one worker (today's single-process path) and once with `--workers 2` (SO_REUSEPORT),
fills the cache with one input on 16 fresh connections (so every worker has it), then
drives `POST /v1/predict` with that same body with wrk (1 thread, `-s` Lua script) at 16
and 64 kept-alive connections. Reports req/s, p50, p99, the share of requests each
worker served (from its own counter file in the multiprocess metrics folder), the
connections each worker holds halfway through (``/proc``), the exact-hit share and the
server CPU per request. wrk runs on the same 2-core machine, and so does whatever else
is running: each row says how the cores were shared (server / wrk / other).
Writes bench/results/workers.json.
Run: `.venv/bin/python bench/workers.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tiergate.config import tiergate_home
from tiergate.offline import read_labelled
from tiergate.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"workers ready on \S+; metrics in (\S+)")
STARTED = re.compile(r"worker (\d+): pid (\d+) started")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    metrics_dir: Path | None = None
    pids: list[int] = field(default_factory=list)  # the processes that serve


@contextmanager
def serve(config: Path, workers: int, timeout_s: float = 600.0) -> Iterator[Server]:
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tiergate", "serve", str(config), "--port", str(port),
             "--workers", str(workers), "--log-level", "warning"],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            text = log.read_text(errors="replace")
            if proc.poll() is not None:
                raise SystemExit(f"server exited {proc.returncode}:\n{text}")
            if workers > 1 and (m := READY.search(text)):
                server.metrics_dir = Path(m.group(1))
                server.pids = [int(p) for _, p in STARTED.findall(text)]
                break
            if workers == 1 and _ready(port):
                server.pids = [proc.pid]
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready after {timeout_s} s:\n{text}")
            time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)  # the supervisor stops its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(log.parent, ignore_errors=True)


def _ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/readyz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def post_fresh(port: int, body: bytes) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/predict", body=body, headers={"content-type": "application/json"})
    out: dict[str, Any] = orjson.loads(conn.getresponse().read())
    conn.close()
    return out


def scrape(port: int) -> dict[tuple[str, str], float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, s.labels.get("result", ""))
            out[key] = out.get(key, 0.0) + s.value
    return out


def per_worker(server: Server) -> dict[int, float]:
    """``tiergate_requests_total`` of each worker, from its own multiprocess file."""
    if server.metrics_dir is None:
        return {server.proc.pid: scrape(server.port)[("tiergate_requests_total", "")]}
    out: dict[int, float] = {}
    for f in server.metrics_dir.glob("counter_*.db"):
        out[int(f.stem.split("_")[1])] = sum(
            s.value for m in MultiProcessCollector.merge([str(f)]) for s in m.samples
            if s.name == "tiergate_requests_total"
        )  # fmt: skip
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    return total


def machine_cpu() -> dict[str, float]:
    """Machine CPU seconds from ``/proc/stat``: busy (all but idle/iowait), softirq, steal."""
    cols = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(cols[:8]) - cols[3] - cols[4]
    return {"busy": busy / TICKS, "softirq": cols[6] / TICKS, "steal": cols[7] / TICKS}


def children_cpu_seconds() -> float:
    """CPU seconds of reaped children (here: the wrk runs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _ms(value: str) -> float:
    num, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def connections_by_worker(pids: list[int], port: int) -> dict[int, int]:
    """Established connections each server process holds on ``port`` (``/proc``)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                established.add(cols[9])  # the socket's inode
    out = {}
    for pid in pids:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        out[pid] = len(inodes & established)
    return out


def wrk(
    port: int, lua: Path, connections: int, seconds: int, pids: list[int] | None = None
) -> dict[str, Any]:
    """One wrk run; with ``pids``, also who holds the connections halfway through."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua),
           f"http://127.0.0.1:{port}/v1/predict"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    held = None
    if pids:
        time.sleep(seconds / 2)
        held = connections_by_worker(pids, port)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"wrk failed ({proc.returncode}): {out}")
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(lat["50"]),
        "p99_ms": _ms(lat["99"]),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else None,
        "connections_by_worker": {str(p): n for p, n in (held or {}).items()},
    }


def run(config: Path, workers: int, body: bytes, lua: Path, seconds: int) -> list[dict[str, Any]]:
    rows = []
    with serve(config, workers) as server:
        for _ in range(16):  # fresh connections: every worker computes and caches it once
            post_fresh(server.port, body)
        assert post_fresh(server.port, body)["cache"] == "exact"
        wrk(server.port, lua, 16, 2)  # warm-up
        for c in (16, 64):
            before, cpu0, m0 = per_worker(server), cpu_seconds(server.pids), scrape(server.port)
            mach0, wrk0, t0 = machine_cpu(), children_cpu_seconds(), time.monotonic()
            row: dict[str, Any] = {"workers": workers, "connections": c}
            row |= wrk(server.port, lua, c, seconds, server.pids)
            mach1, wrk1, wall = machine_cpu(), children_cpu_seconds(), time.monotonic() - t0
            after, cpu1, m1 = per_worker(server), cpu_seconds(server.pids), scrape(server.port)
            served = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
            total = sum(served.values())
            looked = {
                r: m1.get(("tiergate_cache_lookups_total", r), 0.0)
                - m0.get(("tiergate_cache_lookups_total", r), 0.0)
                for r in ("hit", "miss", "coalesced", "error")
            }
            row["served_by_worker"] = {str(p): int(n) for p, n in sorted(served.items())}
            row["worker_share"] = sorted(
                (round(n / total, 3) for n in served.values()), reverse=True
            )
            row["exact_hit_share"] = round(looked["hit"] / (sum(looked.values()) or 1), 4)
            row["server_cpu_us_per_request"] = round((cpu1 - cpu0) / total * 1e6, 1)
            # How the cores were spent: the server, wrk, kernel softirq (loopback TCP),
            # steal (the hypervisor's other guests) and anything else running meanwhile.
            cores = wall * (os.cpu_count() or 1)
            used = {k: mach1[k] - mach0[k] for k in mach1}
            used |= {"server": cpu1 - cpu0, "wrk": wrk1 - wrk0}
            rest = used["busy"] - sum(used[k] for k in ("server", "wrk", "softirq", "steal"))
            row["cpu_share"] = {
                k: round(v / cores, 3)
                for k, v in (*((k, used[k]) for k in ("server", "wrk", "softirq", "steal")),
                             ("other", max(rest, 0.0)))
            }  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "workers.json")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    config = args.demo / "config.yaml"
    texts, _ = read_labelled(args.demo / "data" / "test.jsonl")
    body = orjson.dumps({"input": texts[0]})
    lua = Path(tempfile.mkdtemp()) / "post.lua"
    lua.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
    )
    rows = [r for n in (1, 2) for r in run(config, n, body, lua, args.seconds)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/workers.py",
        "cpus": os.cpu_count(),
        "note": "wrk (1 thread) on the same 2-core machine; cpu_share.other = other jobs meanwhile",
        "path": "POST /v1/predict, one body, every request an exact-cache hit (memory store)",
        "runs": rows,
    }, indent=2) + "\n")  # fmt: skip
    shutil.rmtree(lua.parent, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
