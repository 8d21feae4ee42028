"""`tiergate check`: hold a config to its declared SLOs on real data under real load.

Two measurements feed one verdict:

- :func:`~tiergate.evaluation.evaluate_config` on labelled data gives the accuracy
  at the operating point (and the offline cost per request);
- an open-loop load at the SLO's arrival rate against the service, started in a
  subprocess by :func:`tiergate.bench.served`, gives p99 latency (from the intended
  send time, so a stall shows as latency), availability (non-5xx responses over
  requests sent; transport errors and unanswered requests count as failures) and the
  cost per request as the server reported it in its responses.

Every declared objective becomes a :class:`CheckRow` that passes or fails; undeclared
ones are still measured and shown, unjudged. ``check.json`` holds everything,
``check.html`` shows it with latency plots. The CLI exits non-zero on any miss, so the
command works as a CI gate.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tiergate.artifact import write_json_atomic
from tiergate.errors import ConfigError

if TYPE_CHECKING:
    from rich.table import Table

    from tiergate.config import SLOConfig
    from tiergate.loadgen import LoadResult

__all__ = ["FORMAT", "CheckResult", "CheckRow", "check_config", "render_table"]

FORMAT = "tiergate.check/1"
Progress = Callable[[str], None]

_ROUTE = "/v1/predict"
_EDGE_TOLERANCE = 1e-9  # relative, in buckets: float noise, not a real offset
# name, label, bound direction, unit, display format of target and measured values
_SLOS: tuple[tuple[str, str, Literal["max", "min"], str, str], ...] = (
    ("p99_ms", "p99 latency", "max", "ms", "{:.2f}"),
    ("availability", "availability (non-5xx)", "min", "share", "{:.4f}"),
    ("accuracy", "accuracy", "min", "share", "{:.4f}"),
    ("cost_per_1k", "cost per 1k requests", "max", "per 1k req", "{:.4g}"),
)


@dataclass(frozen=True)
class CheckRow:
    """One objective: its bound, what was measured, and whether the bound holds.

    ``target`` is ``None`` when the config does not declare this objective: the row is
    then shown for information and does not count towards the verdict.
    """

    name: str
    label: str
    direction: Literal["max", "min"]
    target: float | None
    measured: float | None
    unit: str
    note: str = ""
    fmt: str = "{:.4g}"

    @property
    def passed(self) -> bool | None:
        """``True``/``False`` when judged; ``None`` when no target is declared."""
        if self.target is None:
            return None
        if self.measured is None or math.isnan(self.measured):
            return False
        if self.direction == "max":
            return self.measured <= self.target
        return self.measured >= self.target

    @property
    def status(self) -> str:
        """``"pass"``, ``"fail"`` or ``"not set"``."""
        return {True: "pass", False: "fail", None: "not set"}[self.passed]

    @property
    def target_text(self) -> str:
        """The bound as people read it, e.g. ``"≤ 100.00"``."""
        if self.target is None:
            return "—"
        return ("≤ " if self.direction == "max" else "≥ ") + self.fmt.format(self.target)

    @property
    def measured_text(self) -> str:
        """The measured value in the row's display format (``"—"`` if unmeasured)."""
        return "—" if self.measured is None else self.fmt.format(self.measured)

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return {
            "name": self.name,
            "label": self.label,
            "direction": self.direction,
            "target": self.target,
            "measured": self.measured,
            "unit": self.unit,
            "passed": self.passed,
            "status": self.status,
            "note": self.note,
        }


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :func:`check_config`: rows, verdict, files written and the numbers.

    ``passed`` is true only if every declared objective holds. ``bench`` is the load
    summary (:func:`tiergate.loadgen.summarize` plus availability counts), ``evaluation``
    the key numbers of the offline evaluation and ``meta`` what was checked and how.
    """

    rows: tuple[CheckRow, ...]
    passed: bool
    paths: Mapping[str, Path]
    bench: Mapping[str, Any]
    evaluation: Mapping[str, Any]
    meta: Mapping[str, Any]

    @property
    def failed(self) -> tuple[CheckRow, ...]:
        """The rows whose objective was missed."""
        return tuple(r for r in self.rows if r.passed is False)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data (the body of ``check.json``, minus the timeline)."""
        return {
            "format": FORMAT,
            **self.meta,
            "passed": self.passed,
            "rows": [r.to_dict() for r in self.rows],
            "failed": [r.name for r in self.failed],
            "bench": dict(self.bench),
            "evaluation": dict(self.evaluation),
            "paths": {k: str(v) for k, v in self.paths.items()},
        }


def check_config(
    config_path: Path,
    *,
    data: Path,
    report_dir: Path,
    duration_s: float = 10.0,
    rate: float | None = None,
    warmup_s: float = 1.0,
    progress: Progress | None = None,
) -> CheckResult:
    """Evaluate ``config_path`` on ``data`` and load it at ``rate``; judge the SLOs.

    ``rate`` (requests/s) defaults to the config's ``slo.rate``. The service is warmed
    up with ``warmup_s`` of unmeasured load on other inputs, then loaded open-loop for
    ``duration_s`` with the inputs of ``data``. Writes ``report_dir/evaluation/``
    (the evaluation report), ``check.json``, ``check.html`` and two PNGs.
    Raises :class:`ConfigError` if the config declares no SLO or no rate is known.
    """
    from tiergate.bench import request_bodies, served
    from tiergate.config import load_config
    from tiergate.evaluation.evaluate import evaluate_config
    from tiergate.evaluation.plots import require_report_deps
    from tiergate.loadgen import open_loop_count, run_load, summarize
    from tiergate.offline import read_labelled

    say = progress or (lambda _msg: None)
    config = load_config(config_path)
    slo = config.slo
    if all(getattr(slo, name) is None for name, *_ in _SLOS):
        raise ConfigError(
            f"{config_path}: no SLO declared; add e.g. "
            "`slo: {p99_ms: 100, accuracy: 0.8, availability: 0.999, rate: 50}`"
        )
    load_rate = rate if rate is not None else slo.rate
    if load_rate is None:
        raise ConfigError(f"{config_path}: no load rate: set slo.rate in the config or pass --rate")
    if load_rate <= 0 or duration_s <= 0 or warmup_s < 0:
        raise ConfigError("rate and duration must be positive, warm-up not negative")
    require_report_deps()
    report_dir = Path(report_dir)
    texts, _ = read_labelled(data)
    created = datetime.now(UTC).isoformat(timespec="seconds")

    say(f"evaluating on {data}")
    seen: set[str] = set()

    def eval_progress(stage: str, done: int, total: int) -> None:
        if stage not in seen:
            seen.add(stage)
            say(f"evaluate: {stage}")

    report = evaluate_config(
        config_path, data, report_dir=report_dir / "evaluation", progress=eval_progress
    )

    # Warm up on the inputs in reverse order so the measured run does not start
    # with inputs the service has just seen (caches would flatter it). One body per
    # request (the load generator cycles them): exactly as many as each run sends.
    bodies = request_bodies(
        texts, max(1, min(open_loop_count(load_rate, duration_s), 200_000)), 0.0
    )
    warm = request_bodies(texts[::-1], max(1, open_loop_count(load_rate, warmup_s)), 0.0)

    def load_progress(t: float, res: LoadResult) -> None:
        done = sum(res.statuses.values())
        say(f"load {t:4.1f}s: sent {res.sent}, done {done}")

    say("starting the server")
    with served(config_path) as base:
        url = base.rstrip("/") + _ROUTE
        if warmup_s > 0:
            say(f"warming up for {warmup_s:g}s")
            asyncio.run(run_load(url, warm, rate=load_rate, duration_s=warmup_s))
        say(f"load at {load_rate:g} req/s for {duration_s:g}s")
        res = asyncio.run(
            run_load(url, bodies, rate=load_rate, duration_s=duration_s, progress=load_progress)
        )

    summary = summarize(res)
    non_5xx = sum(c for s, c in res.statuses.items() if s < 500)
    availability = non_5xx / res.sent if res.sent else None
    served_cost = summary["mean_cost"]
    bench: dict[str, Any] = {
        **summary,
        "route": _ROUTE,
        "warmup_s": warmup_s,
        "non_5xx": non_5xx,
        "unanswered": res.sent - sum(res.statuses.values()) - sum(res.transport_errors.values()),
        "availability": availability,
        "cost_per_1k": None if served_cost is None else 1000.0 * served_cost,
    }
    op = report["operating_point"]
    evaluation: dict[str, Any] = {
        "report": str(report_dir / "evaluation" / "report.html"),
        "n": report["data"]["n"],
        "accuracy": op["accuracy"],
        "escalation_rate": op["escalation_rate"],
        "mean_cost": op["mean_cost"],
        "cost_per_1k": op["cost_per_1k"],
        "tier_shares": op["tier_shares"],
        "calibration_version": report["calibration_version"],
    }
    rows = _rows(slo, bench, evaluation, rate=load_rate, duration_s=duration_s)
    paths = {
        "json": report_dir / "check.json",
        "html": report_dir / "check.html",
        "evaluation": report_dir / "evaluation" / "report.html",
    }
    meta = {
        "created": created,
        "service": config.service,
        "config": str(config.path or config_path),
        "data": str(data),
        "slo": slo.model_dump(),
        "rate": load_rate,
        "rate_from": "option" if rate is not None else "slo.rate",
        "duration_s": duration_s,
    }
    result = CheckResult(
        rows=rows,
        passed=all(r.passed is not False for r in rows),
        paths=paths,
        bench=bench,
        evaluation=evaluation,
        meta=meta,
    )
    _write_report(result, res, report_dir, p99_target_ms=slo.p99_ms)
    say(f"wrote {paths['html']}")
    return result


def _rows(
    slo: SLOConfig,
    bench: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    *,
    rate: float,
    duration_s: float,
) -> tuple[CheckRow, ...]:
    sent, non_5xx = bench["sent"], bench["non_5xx"]
    offline = evaluation["cost_per_1k"]
    measured: dict[str, tuple[float | None, str]] = {
        "p99_ms": (
            bench["latency_ms"].get("p99"),
            f"client-side, open loop at {rate:g} req/s for {duration_s:g}s",
        ),
        "availability": (bench["availability"], f"{non_5xx} of {sent} requests not 5xx"),
        "accuracy": (
            evaluation["accuracy"],
            f"{evaluation['n']} labelled examples, {evaluation['escalation_rate']:.1%} escalated",
        ),
        "cost_per_1k": (
            bench["cost_per_1k"],
            "as served" + ("" if offline is None else f"; offline evaluation {offline:.4g}"),
        ),
    }
    return tuple(
        CheckRow(
            name=name,
            label=label,
            direction=direction,
            target=getattr(slo, name),
            measured=measured[name][0],
            unit=unit,
            note=measured[name][1],
            fmt=fmt,
        )
        for name, label, direction, unit, fmt in _SLOS
    )


def _timeline(
    offsets_s: Sequence[float], lat_ms: Sequence[float], duration_s: float
) -> dict[str, Any]:
    # Per-bucket percentiles by intended send time: 1 s buckets, finer for short runs.
    bucket = 1.0 if duration_s >= 10 else max(duration_s / 10, 0.05)
    off = np.asarray(offsets_s, dtype=np.float64)
    lat = np.asarray(lat_ms, dtype=np.float64)
    # A send due on a bucket edge belongs to the bucket it opens, even when float
    # division puts it a hair below (0.15 / 0.05 is 2.9999999999999996).
    pos = off / bucket
    idx = np.floor(pos + _EDGE_TOLERANCE * np.maximum(1.0, pos)).astype(np.int64)
    points = []
    for b in np.unique(idx):
        sel = lat[idx == b]
        points.append(
            {
                "t_s": float(b * bucket),
                "n": int(sel.size),
                "p50_ms": float(np.percentile(sel, 50)),
                "p99_ms": float(np.percentile(sel, 99)),
                "max_ms": float(sel.max()),
            }
        )
    return {"bucket_s": bucket, "points": points}


def _write_report(
    result: CheckResult, res: LoadResult, out_dir: Path, *, p99_target_ms: float | None
) -> None:
    import base64
    import os
    from importlib import resources

    import jinja2

    from tiergate.evaluation.check_plots import write_check_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    lat_ms = [x * 1000.0 for x in res.latencies_s]
    timeline = _timeline(res.send_offsets_s, lat_ms, result.meta["duration_s"])
    plots = write_check_plots(
        res.send_offsets_s,
        lat_ms,
        timeline,
        out_dir,
        p99_target_ms=p99_target_ms,
        title=f"{result.meta['service']} at {result.meta['rate']:g} req/s",
    )
    body = {**result.to_dict(), "plots": plots, "timeline": timeline}
    write_json_atomic(result.paths["json"], body)

    source = (resources.files("tiergate.evaluation") / "templates" / "check.html").read_text(
        encoding="utf-8"
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda x, d=2: "—" if x is None else f"{x:.{d}f}"
    env.filters["sig"] = lambda x: "—" if x is None else f"{x:.4g}"
    env.filters["pct"] = lambda x, d=1: "—" if x is None else f"{100 * x:.{d}f} %"
    images = {
        name: base64.b64encode((out_dir / file).read_bytes()).decode("ascii")
        for name, file in plots.items()
    }
    evaluation_link = Path(os.path.relpath(result.paths["evaluation"], out_dir)).as_posix()
    html = env.from_string(source).render(
        r=body, rows=result.rows, images=images, evaluation_link=evaluation_link
    )
    result.paths["html"].write_text(html, encoding="utf-8")


def render_table(result: CheckResult) -> Table:
    """The verdict as a rich table: green rows hold, red rows missed, dim rows not set."""
    from rich.table import Table

    verdict = (
        "[bold green]all SLOs hold[/]"
        if result.passed
        else f"[bold red]{len(result.failed)} SLO(s) missed: "
        + ", ".join(r.name for r in result.failed)
        + "[/]"
    )
    table = Table(title=f"SLO check of {result.meta.get('service', '')}", caption=verdict)
    table.add_column("SLO")
    table.add_column("target", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("unit")
    table.add_column("result", justify="center")
    table.add_column("note")
    for row in result.rows:
        style = {True: "green", False: "bold red", None: "dim"}[row.passed]
        table.add_row(
            row.label,
            row.target_text,
            row.measured_text,
            row.unit,
            row.status.upper() if row.passed is not None else row.status,
            row.note,
            style=style,
        )
    return table
