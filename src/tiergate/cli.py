"""The `tiergate` command line (typer)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tiergate.config import load_config, tiergate_home
from tiergate.errors import CalibrationError, TiergateError

if TYPE_CHECKING:
    from tiergate.service import Service

__all__ = ["app", "main"]

app = typer.Typer(
    name="tiergate",
    help="Serve a fast and an accurate model as calibrated tiers of one service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
demo_app = typer.Typer(help="The built-in review-sentiment demo.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
keys_app = typer.Typer(help="API keys (a keys file of salted hashes).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

err = Console(stderr=True)
stdout = Console()


def _fail(exc: TiergateError, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
    return typer.Exit(code)


def demo_dir() -> Path:
    return tiergate_home() / "demo"


def _demo_config(console: Console, target: Path | None = None) -> Path:
    """The demo's config in ``target`` (default :func:`demo_dir`), built first if need be.

    The build imports torch and transformers, which would stay in memory for the life
    of the process (about 1.4 GB of RSS in a server that never uses them again), so it
    runs as ``tiergate demo build`` in a child process; its progress goes to stderr.
    """
    import subprocess

    from tiergate.demo.build import built_config
    from tiergate.errors import ConfigError

    target = target or demo_dir()
    path = built_config(target)
    if path is not None:
        return path
    console.print(f"building the demo in {target} (first use: a few minutes) …", highlight=False)
    command = [sys.executable, "-m", "tiergate", "demo", "build", "--dir", str(target)]
    try:
        # Not into our stdout, where `predict` prints JSON: the child's one line there
        # names the config, which we know. Its stderr (the progress) is ours.
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except OSError as exc:
        raise ConfigError(f"could not start the demo build: {exc}", path=str(target)) from exc
    path = built_config(target)
    if done.returncode != 0 or path is None:
        raise ConfigError(
            f"building the demo in {target} failed (exit code {done.returncode}; its messages"
            f" are above); retry with `tiergate demo build --dir {target}`",
            path=str(target),
            exit_code=done.returncode,
        )
    return path


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
    )  # fmt: skip


def _ticker(bar: Progress) -> Callable[[str, int, int], None]:
    """A ``progress(name, done, total)`` callback drawing one bar per stage."""
    tasks: dict[str, Any] = {}

    def tick(name: str, done: int, total: int) -> None:
        if name not in tasks:
            label = name if " " in name else f"scoring {name}"
            tasks[name] = bar.add_task(label, total=total)
        bar.update(tasks[name], completed=done)

    return tick


@demo_app.command("build")
def demo_build(
    dir: Annotated[
        Path | None, typer.Option(help="Where to build (default: $TIERGATE_HOME/demo).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the artifacts exist.")] = False,
) -> None:
    """Build the demo's data split, models and calibration (cached)."""
    from tiergate.demo.build import build_demo

    try:
        path = build_demo(dir or demo_dir(), force=force, console=err)
    except TiergateError as exc:
        raise _fail(exc) from None
    stdout.print(f"demo config: {path}")


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="Key name (shown in logs, metrics, errors).")],
    keys_file: Annotated[Path, typer.Option(help="Keys file (created if absent).")],
    rights: Annotated[
        str, typer.Option(help="Comma-separated: predict, usage, metrics, docs, admin.")
    ] = "predict,usage",
    per_second: Annotated[float | None, typer.Option(help="Rate limit, requests/s.")] = None,
    per_minute: Annotated[float | None, typer.Option(help="Rate limit, requests/min.")] = None,
    burst: Annotated[float | None, typer.Option(help="Per-second bucket size.")] = None,
    budget: Annotated[
        float | None, typer.Option(help="Cost budget per --budget-period (reserved per request).")
    ] = None,
    budget_period: Annotated[
        str, typer.Option(help="hour, day, week, month (UTC) or total.")
    ] = "day",
    budget_mode: Annotated[
        str, typer.Option(help="When the budget cannot cover a request: refuse (402) or degrade.")
    ] = "refuse",
    replace: Annotated[bool, typer.Option(help="Rotate: replace an existing key.")] = False,
) -> None:
    """Add a key; print it once (only its salted hash is stored)."""
    from pydantic import ValidationError

    from tiergate.tenancy import Budget, RateLimit, add_key

    try:
        wanted = tuple(r.strip() for r in rights.split(",") if r.strip())
        bad = sorted(set(wanted) - {"predict", "usage", "metrics", "docs", "admin"})
        if bad:
            err.print(f"[bold red]error:[/] unknown right(s): {', '.join(bad)}")
            raise typer.Exit(2)
        limit = None
        if per_second is not None or per_minute is not None:
            limit = RateLimit(per_second=per_second, per_minute=per_minute, burst=burst)
        spend = None
        if budget is not None:
            spend = Budget(amount=budget, period=budget_period, on_exhausted=budget_mode)
        key = add_key(
            keys_file, name, rights=wanted, rate_limit=limit, budget=spend,  # type: ignore[arg-type]
            replace=replace,
        )  # fmt: skip
    except ValidationError as exc:
        err.print(f"[bold red]error:[/] {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from None
    except TiergateError as exc:
        raise _fail(exc) from None
    err.print(f"key {name!r} written to {keys_file} (hash only); the key, shown once:")
    print(key)


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Argument(help="Service config (default: the demo).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    workers: Annotated[
        int,
        typer.Option(min=1, help="Processes sharing the port (SO_REUSEPORT); about one per core."),
    ] = 1,
) -> None:
    """Serve a config over HTTP (the built-in demo without CONFIG)."""
    import uvicorn

    from tiergate.api import create_app
    from tiergate.service import Service

    if workers > 1:
        from tiergate.workers import Supervisor

        try:
            path = config or _demo_config(err)
            code = Supervisor(
                path, workers=workers, host=host, port=port, log_level=log_level
            ).run()
        except TiergateError as exc:
            raise _fail(exc) from None
        raise typer.Exit(code)
    try:
        path = config or _demo_config(err)
        cfg = load_config(path)
        err.print(f"loading {cfg.service} from {path} …")
        service = Service.from_config(cfg)
        if any(t.remote for t in service.tiers):
            # Probe remote upstreams here, so a refusal is one line and exit code 2 rather
            # than a traceback from inside the server's lifespan (which probes again).
            asyncio.run(_probe_remote(service))
    except TiergateError as exc:
        raise _fail(exc) from None
    err.print(f"tiers: {', '.join(repr(t) for t in service.tiers)}", highlight=False)
    if service.tenancy.enabled:
        err.print(f"auth: {service.tenancy.describe()}", highlight=False)
    else:
        err.print("auth: open — no keys file configured, anyone reaching this port may call it")
    if cfg.access_log:
        _access_log_to_stdout()
    from tiergate.drain import DrainingServer

    server = DrainingServer(
        uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level,
                       access_log=False, loop="auto", http="auto"),
        service, grace_s=cfg.drain_grace_s,
    )  # fmt: skip
    server.run()


def _access_log_to_stdout() -> None:
    import logging

    logger = logging.getLogger("tiergate.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


async def _probe_remote(service: Service) -> None:
    """Start-up probes of the remote tiers; their connections close after (per loop)."""
    try:
        await service.start()
    finally:
        for tier in service.tiers:
            if tier.remote:
                await tier.adapter.aclose()  # type: ignore[union-attr]


@app.command()
def predict(
    args: Annotated[
        list[str], typer.Argument(help="[CONFIG] TEXT... (a .yaml first means CONFIG)")
    ],
) -> None:
    """One-off predictions in-process; prints one JSON object per text."""
    from tiergate.service import Service
    from tiergate.types import Result

    if args and args[0].endswith((".yaml", ".yml")):
        config_path: Path | None = Path(args[0])
        texts = args[1:]
    else:
        config_path, texts = None, args
    if not texts:
        err.print("[bold red]error:[/] give at least one TEXT")
        raise typer.Exit(2)
    try:
        cfg = load_config(config_path or _demo_config(err))
        service = Service.from_config(cfg, measure_costs=True)

        async def answer() -> list[Result]:
            try:
                await service.start()
                return await service.predict_batch(texts)
            finally:
                await service.aclose()

        results = asyncio.run(answer())
    except TiergateError as exc:
        raise _fail(exc) from None
    for r in results:
        sys.stdout.write(json.dumps(r.to_dict()) + "\n")


@app.command()
def calibrate(
    config: Annotated[Path, typer.Argument(help="Service config.")],
    data: Annotated[Path, typer.Option(help="Labelled JSONL/CSV calibration data.")],
    target_accuracy: Annotated[float, typer.Option(help="Accuracy the cascade must keep.")],
    confidence: Annotated[float, typer.Option(help="Probability the guarantee holds.")] = 0.95,
    out: Annotated[
        Path | None, typer.Option(help="Artifact path (default: next to CONFIG).")
    ] = None,
) -> None:
    """Choose the cheapest thresholds that meet the accuracy target, with a guarantee."""
    from tiergate.offline import calibrate_config

    target = out or config.parent / "calibration.json"
    if not 0 < target_accuracy < 1 or not 0 < confidence < 1:
        err.print("[bold red]error:[/] --target-accuracy and --confidence must be in (0, 1)")
        raise typer.Exit(2)
    try:
        with _progress() as bar:
            tick = _ticker(bar)
            body = calibrate_config(
                config, data, target_accuracy=target_accuracy, confidence=confidence,
                out=target, progress=tick,
            )  # fmt: skip
    except CalibrationError as exc:
        raise _fail(exc, 1) from None
    except TiergateError as exc:
        raise _fail(exc) from None
    a = body["achieved"]
    stdout.print(
        f"wrote {target} (version {body['version']})\n"
        f"thresholds: {body['thresholds']}\n"
        f"accuracy on calibration data {a['accuracy']:.4f}; certified lower bound "
        f"{a['accuracy_lower_bound']:.4f} ≥ target {body['target_accuracy']:.4f} "
        f"at confidence {body['confidence']}\n"
        f"escalation rate {a['escalation_rate']:.3f}; expected cost {a['expected_cost']:.3g}",
        highlight=False,
    )
    _warn(body.get("warnings", []))


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        err.print(f"[bold yellow]warning:[/] {w}", highlight=False)


@app.command()
def recalibrate(
    config: Annotated[Path, typer.Argument(help="Service config (its calibration is replaced).")],
    feedback: Annotated[
        Path, typer.Option(help="Feedback log (`monitor.feedback.log`): labelled answers.")
    ],
    labels: Annotated[
        str,
        typer.Option(
            help="Which labels: feedback (true labels), shadow (the last tier's), or both."
        ),
    ] = "feedback",
    target_accuracy: Annotated[
        float | None, typer.Option(help="Accuracy target (default: the running artifact's).")
    ] = None,
    confidence: Annotated[float | None, typer.Option(help="Default: the artifact's.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Artifact path (default: the config's calibration file).")
    ] = None,
) -> None:
    """A new calibration from labelled feedback, side by side with the running one."""
    from tiergate.offline import recalibrate_config

    sources = {"feedback": ("feedback",), "shadow": ("shadow",),
               "both": ("feedback", "shadow")}.get(labels)  # fmt: skip
    if sources is None:
        err.print("[bold red]error:[/] --labels must be feedback, shadow or both")
        raise typer.Exit(2)
    try:
        cfg = load_config(config, calibrating=True)
        target = out or cfg.calibration or config.parent / "calibration.json"
        with _progress() as bar:
            body, before = recalibrate_config(
                config, feedback, sources=sources, target_accuracy=target_accuracy,
                confidence=confidence, out=target, progress=_ticker(bar),
            )  # fmt: skip
    except CalibrationError as exc:
        raise _fail(exc, 1) from None
    except TiergateError as exc:
        raise _fail(exc) from None
    a = body["achieved"]
    rows = [
        ("version", (before or {}).get("version"), body["version"]),
        ("thresholds", (before or {}).get("thresholds"), body["thresholds"]),
        ("accuracy on the feedback", (before or {}).get("accuracy"), a["accuracy"]),
        ("certified lower bound", (before or {}).get("accuracy_lower_bound"),
         a["accuracy_lower_bound"]),
        ("escalation rate", (before or {}).get("escalation_rate"), a["escalation_rate"]),
        ("expected cost", (before or {}).get("expected_cost"), a["expected_cost"]),
    ]  # fmt: skip
    table = Table(title=f"recalibrated on {body['data']['n']} labelled inputs "
                        f"({labels}); target {body['target_accuracy']:.4f}")  # fmt: skip
    for col in ("", "running", "new"):
        table.add_column(col)
    for name, old, new in rows:
        table.add_row(name, _cell(old), _cell(new))
    stdout.print(table)
    stdout.print(
        f"wrote {target}; a running service picks it up with `POST /admin/reload` or SIGHUP",
        highlight=False,
    )
    if "shadow" in sources:
        err.print("[yellow]note:[/] shadow labels are the last tier's answers, not true labels")
    _warn(body.get("warnings", []))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:.4f}" for k, v in value.items())
    return str(value)


@app.command()
def evaluate(
    config: Annotated[Path, typer.Argument(help="Service config (with its calibration).")],
    data: Annotated[Path, typer.Option(help="Labelled JSONL/CSV data.")],
    report: Annotated[Path, typer.Option(help="Report folder.")] = Path("report"),
    semantic_threshold: Annotated[
        float | None,
        typer.Option(help="Replay a trace with a semantic cache at this similarity."),
    ] = None,
    compare: Annotated[
        list[Path] | None,
        typer.Option(help="Another config to evaluate side by side (repeatable)."),
    ] = None,
) -> None:
    """Accuracy, escalation, cost and latency on labelled data, with baselines and plots."""
    from tiergate.evaluation import evaluate_config

    try:
        with _progress() as bar:
            tick = _ticker(bar)
            rep = evaluate_config(
                config, data, report_dir=report, progress=tick,
                semantic_threshold=semantic_threshold, compare=compare or (),
            )  # fmt: skip
    except TiergateError as exc:
        raise _fail(exc) from None
    op = rep["operating_point"]
    if rep["comparison"]:
        table = Table("config", "tiers", "accuracy", "vs always-last", "cost/1k",
                      "cost vs always-last", "reaching last", "gap to oracle")  # fmt: skip
        for row in rep["comparison"]:
            table.add_row(
                Path(row["config"]).name, " → ".join(row["tiers"]), f"{row['accuracy']:.4f}",
                f"{row['accuracy_vs_always_last']:.2%}", f"{row['cost_per_1k']:.3g}",
                f"{row['cost_vs_always_last']:.2%}", f"{row['reaching_last']:.1%}",
                f"{100 * row['gap_to_oracle']:.1f} pts",
            )  # fmt: skip
        stdout.print(table, width=max(stdout.width, 150))
    _warn(rep.get("warnings", []))
    stdout.print(
        f"accuracy {op['accuracy']:.4f}, escalated {op['escalation_rate']:.3f}, "
        f"cost/request {op['mean_cost']:.3g}\nwrote {report / 'report.html'}",
        highlight=False,
    )


@app.command()
def bench(
    target: Annotated[str, typer.Argument(help="Base URL (http://127.0.0.1:8000) or a config.")],
    rate: Annotated[float | None, typer.Option(help="Open loop: requests per second.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Closed loop: requests in flight.")
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds of load.")] = 10.0,
    data: Annotated[
        Path | None, typer.Option(help="JSONL inputs (default: demo test split).")
    ] = None,
    repeat_ratio: Annotated[
        float, typer.Option(help="Share of requests repeating an earlier input.")
    ] = 0.0,
    out: Annotated[Path, typer.Option(help="Result JSON.")] = Path("bench.json"),
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open loop: most requests in flight (connections).")
    ] = 64,
) -> None:
    """Drive a service with load and write throughput, latency percentiles and counts."""
    from tiergate.bench import run_bench

    if (rate is None) == (concurrency is None):
        err.print("[bold red]error:[/] give exactly one of --rate or --concurrency")
        raise typer.Exit(2)
    try:
        summary = run_bench(
            target, rate=rate, concurrency=concurrency, duration_s=duration,
            data=data, repeat_ratio=repeat_ratio, out=out, console=err,
            max_connections=max_connections,
        )  # fmt: skip
    except TiergateError as exc:
        raise _fail(exc) from None
    lat = summary["latency_ms"]
    stdout.print(
        f"{summary['throughput_rps']:.0f} req/s; p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
        f"p99.9 {lat['p99.9']:.2f} ms; statuses {summary['statuses']}; wrote {out}",
        highlight=False,
    )


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="Service config with an `slo:` section.")],
    data: Annotated[
        Path | None, typer.Option(help="Labelled data (default: demo test split).")
    ] = None,
    report: Annotated[Path, typer.Option(help="Report folder.")] = Path("check-report"),
    duration: Annotated[float, typer.Option(help="Seconds of load.")] = 10.0,
    rate: Annotated[float | None, typer.Option(help="Arrival rate (default: slo.rate).")] = None,
) -> None:
    """Evaluate + load-test against the config's SLOs; exit 0 only if all hold (a CI gate)."""
    from tiergate.evaluation import check_config, render_table

    data = data or tiergate_home() / "demo" / "data" / "test.jsonl"
    try:
        res = check_config(
            config, data=data, report_dir=report, duration_s=duration, rate=rate,
            progress=lambda msg: err.print(f"  {msg}", highlight=False),
        )  # fmt: skip
    except TiergateError as exc:
        raise _fail(exc) from None
    stdout.print(render_table(res))
    stdout.print(f"report: {res.paths['html']}", highlight=False)
    raise typer.Exit(0 if res.passed else 1)


def main() -> None:
    """Entry point of the `tiergate` script."""
    app()
