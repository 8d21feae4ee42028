"""Per-call cost of the request path's bookkeeping: circuit breaker and latency tracker.

- **breaker**: ns per ``CircuitBreaker.record()`` in steady state with 100, 10,000 and
  100,000 outcomes in the window (one call every ``window_s / n`` on a manual clock, one
  failure in 100, so it stays closed), for the current breaker and a baseline revision's;
- **latency**: ns per ``LatencyTracker.observe()`` + ``expected()`` pair (as the cascade
  does per call), on lognormal latencies, current vs baseline.

The baseline is read from git (``--baseline REV``, default the commit before the bucketed
window): its ``resilience/breaker.py`` as a module, and the ``LatencyTracker`` class out of
its ``tier.py``. Each figure is the best of ``--repeats`` runs (the least disturbed by
other load, as timeit advises), including one manual-clock call and advance per operation
(``harness_ns`` is that loop with no-op calls). Timings are on this machine; compare ratios
from one run.

Run: `.venv/bin/python bench/breaker.py` → bench/results/breaker.json (about a minute).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
import types
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.resilience.breaker import BreakerPolicy, CircuitBreaker
from tiergate.testing import ManualClock
from tiergate.tier import LatencyTracker

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "824a2ac"  # list-of-outcomes breaker, np.quantile tracker
WINDOW_S = 10.0


def git_show(rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def baseline_classes(rev: str) -> tuple[Any, Any, Any]:
    """(CircuitBreaker, BreakerPolicy, LatencyTracker) as they were at ``rev``."""
    breaker = types.ModuleType("baseline_breaker")
    sys.modules[breaker.__name__] = breaker  # dataclasses look their module up
    code = compile(git_show(rev, "src/tiergate/resilience/breaker.py"), "baseline", "exec")
    exec(code, vars(breaker))
    tier_src = git_show(rev, "src/tiergate/tier.py")
    (cls,) = [
        n for n in ast.parse(tier_src).body
        if isinstance(n, ast.ClassDef) and n.name == "LatencyTracker"
    ]  # fmt: skip
    ns: dict[str, Any] = {"deque": deque, "np": np}
    exec(compile(ast.Module([cls], []), "baseline", "exec"), ns)
    return breaker.CircuitBreaker, breaker.BreakerPolicy, ns["LatencyTracker"]


def best_ns(run: Callable[[], float], repeats: int) -> float:
    return min(run() for _ in range(repeats))


def record_ns(breaker_cls: Any, policy: Any, n: int, calls: int) -> float:
    """ns per record() once the window holds ``n`` outcomes."""
    clock = ManualClock(1000.0)
    b = breaker_cls("t", policy, clock=clock)
    step = WINDOW_S / n
    if hasattr(b, "_outcomes"):  # the baseline: filling through record() is O(n²)
        b._outcomes.extend((clock.now + i * step, i % 100 != 0) for i in range(n))
        clock.advance(n * step)
    else:
        for i in range(n):
            b.record(i % 100 != 0)
            clock.advance(step)
    t0 = time.perf_counter_ns()
    for i in range(calls):
        b.record(i % 100 != 0)
        clock.advance(step)
    elapsed = time.perf_counter_ns() - t0
    assert b.state == "closed"
    return elapsed / calls


def harness_ns(calls: int) -> float:
    """The loop above with a no-op in place of record()."""
    clock = ManualClock(1000.0)

    def noop(_: bool) -> None:
        clock()

    t0 = time.perf_counter_ns()
    for i in range(calls):
        noop(i % 100 != 0)
        clock.advance(0.001)
    return (time.perf_counter_ns() - t0) / calls


def tracker_ns(tracker_cls: Any, latencies: list[float]) -> dict[str, float]:
    """ns per observe() + expected(), and per expected() alone, after a warm-up."""
    t = tracker_cls()
    for v in latencies[:1000]:
        t.observe(v)
    t0 = time.perf_counter_ns()
    for v in latencies:
        t.observe(v)
        t.expected()
    pair = (time.perf_counter_ns() - t0) / len(latencies)
    t0 = time.perf_counter_ns()
    for _ in latencies:
        t.expected()
    alone = (time.perf_counter_ns() - t0) / len(latencies)
    return {"observe_expected": pair, "expected_alone": alone, "p90_s": t.expected()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "breaker.json")
    args = ap.parse_args()

    old_breaker, old_policy_cls, old_tracker = baseline_classes(args.baseline)
    policy = dict(failure_rate=0.5, min_calls=10, window_s=WINDOW_S)
    breaker_rows = []
    for n in (100, 10_000, 100_000):
        old_calls = max(200, 2_000_000 // n)  # the old one costs O(n) per call
        new_run = partial(record_ns, CircuitBreaker, BreakerPolicy(**policy), n, 200_000)
        old_run = partial(record_ns, old_breaker, old_policy_cls(**policy), n, old_calls)
        new, old = best_ns(new_run, args.repeats), best_ns(old_run, args.repeats)
        row = {"outcomes_in_window": n, "new_ns": round(new), "old_ns": round(old),
               "speedup": round(old / new, 1)}  # fmt: skip
        print(f"breaker record, {n:>7} in window: new {new:8.0f} ns, old {old:10.0f} ns")
        breaker_rows.append(row)

    rng = np.random.default_rng(0)
    latencies = [float(v) for v in rng.lognormal(np.log(0.005), 0.6, 200_000)]
    tracker: dict[str, Any] = {}
    for name, cls in (("new", LatencyTracker), ("old", old_tracker)):
        runs = [tracker_ns(cls, latencies) for _ in range(args.repeats)]
        tracker[name] = {
            "observe_expected_ns": round(min(r["observe_expected"] for r in runs)),
            "expected_alone_ns": round(min(r["expected_alone"] for r in runs)),
            "p90_ms": round(runs[0]["p90_s"] * 1000, 3),
        }
        print(f"latency tracker {name}: {tracker[name]}")
    tracker["true_p90_ms_of_the_distribution"] = round(
        float(np.exp(np.log(0.005) + 0.6 * 1.2815515655446004)) * 1000, 3
    )

    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine
        },
        "command": "python bench/breaker.py",
        "baseline": args.baseline,
        "harness_ns": round(best_ns(partial(harness_ns, 200_000), args.repeats)),
        "breaker_record": breaker_rows,
        "latency_tracker": tracker,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
