"""Plots (matplotlib) and the HTML page (jinja2) of an evaluation report.

Both libraries are the ``[report]`` extra, imported only here and only when used.
Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot), so
there is no global backend or figure registry to touch, and nothing to close.
"""

from __future__ import annotations

import base64
import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiergate.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["require_report_deps", "write_html", "write_plots"]

_DPI = 110
_COLORS = {
    "cascade": "#1f77b4",
    "operating": "#d62728",
    "fast": "#2ca02c",
    "accurate": "#9467bd",
    "random": "#7f7f7f",
    "oracle": "#ff7f0e",
}


def require_report_deps() -> None:
    """Raise :class:`ConfigError` with an install hint if matplotlib or jinja2 is missing."""
    try:
        import jinja2  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the evaluation report needs matplotlib and jinja2 ({exc.name} is missing): "
            "pip install 'tiergate[report]'",
            missing=exc.name,
        ) from exc


def write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write every PNG of the report into ``out_dir``; return ``{plot: file name}``."""
    require_report_deps()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    makers = {
        "accuracy_vs_escalation": _accuracy_vs_escalation,
        "accuracy_vs_cost": _accuracy_vs_cost,
        "reliability": _reliability,
        "latency": _latency,
        "confusion_matrix": _confusion,
    }
    files = {}
    for name, make in makers.items():
        fig = make(report)
        fig.savefig(out_dir / f"{name}.png", dpi=_DPI)
        files[name] = f"{name}.png"
    return files


def write_html(report: dict[str, Any], out_dir: Path) -> Path:
    """Render ``report.html`` (PNGs inlined, so the page is one self-contained file)."""
    require_report_deps()
    import jinja2

    source = (resources.files("tiergate.evaluation") / "templates" / "report.html").read_text(
        encoding="utf-8"
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda x, d=1: "—" if x is None else f"{100 * x:.{d}f} %"
    env.filters["num"] = lambda x, d=3: "—" if x is None else f"{x:.{d}f}"
    env.filters["sig"] = _significant
    images = {
        name: base64.b64encode((Path(out_dir) / file).read_bytes()).decode("ascii")
        for name, file in report["plots"].items()
    }
    html = env.from_string(source).render(r=report, images=images)
    path = Path(out_dir) / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def _significant(x: float | None) -> str:
    # Four significant digits, without an exponent unless the number is extreme.
    if x is None:
        return "—"
    if x == 0 or not 1e-3 <= abs(x) < 1e7:
        return f"{x:.3g}"
    return f"{x:.{max(0, 3 - math.floor(math.log10(abs(x))))}f}"


def _figure(width: float = 7.0, height: float = 4.8) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _baseline_markers(ax: Axes, report: dict[str, Any], x_key: str, scale: float) -> None:
    base, op = report["baselines"], report["operating_point"]
    first, last = report["tiers"][0]["name"], report["tiers"][-1]["name"]
    line = base["random_line"]
    ax.plot(
        [p[x_key] * scale for p in line], [p["accuracy"] for p in line],
        "--", color=_COLORS["random"], label="random routing",
    )  # fmt: skip
    oc = report["oracle_curve"]
    ax.plot(
        [p[x_key] * scale for p in oc], [p["accuracy"] for p in oc],
        "-.", color=_COLORS["oracle"], label="oracle routing",
    )  # fmt: skip
    for key, color, marker, label in (
        ("always_first", _COLORS["fast"], "s", f"always {first}"),
        ("always_last", _COLORS["accurate"], "D", f"always {last}"),
        ("oracle", _COLORS["oracle"], "*", f"oracle: escalate {first}'s mistakes"),
    ):
        p = base[key]
        ax.plot(p[x_key] * scale, p["accuracy"], marker, color=color, ms=8, label=label, zorder=4)
    ax.plot(
        op[x_key] * scale, op["accuracy"], "o", color=_COLORS["operating"], ms=9,
        label="operating point", zorder=5,
    )  # fmt: skip


def _accuracy_vs_escalation(report: dict[str, Any]) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    pts = report["curve"]["points"]
    ax.plot(
        [p["escalation_rate"] for p in pts], [p["accuracy"] for p in pts],
        color=_COLORS["cascade"], lw=2, label=f"cascade (sweep {report['curve']['swept_tier']})",
    )  # fmt: skip
    _baseline_markers(ax, report, "escalation_rate", 1.0)
    op = report["operating_point"]
    ax.vlines(
        op["escalation_rate"], op["accuracy"], op["oracle_accuracy_at_same_escalation"],
        colors=_COLORS["operating"], linestyles=":",
        label=f"gap to oracle: {100 * op['gap_to_oracle']:.1f} points",
    )  # fmt: skip
    ax.set(
        title="Accuracy vs fraction escalated",
        xlabel=f"fraction escalated past {report['tiers'][0]['name']}",
        ylabel="accuracy",
        xlim=(-0.02, 1.02),
    )
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.yaxis.set_major_formatter("{x:.0%}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _accuracy_vs_cost(report: dict[str, Any]) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    pts = report["curve"]["points"]
    ax.plot(
        [p["mean_cost"] * 1000 for p in pts], [p["accuracy"] for p in pts],
        color=_COLORS["cascade"], lw=2, label="cascade",
    )  # fmt: skip
    _baseline_markers(ax, report, "mean_cost", 1000.0)
    ax.set(title="Accuracy vs cost", xlabel="mean cost per 1k requests", ylabel="accuracy")
    ax.yaxis.set_major_formatter("{x:.0%}")
    ax.xaxis.set_major_formatter("{x:.3g}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _reliability(report: dict[str, Any]) -> Figure:
    tiers = report["tiers"]
    fig = _figure(4.2 * len(tiers), 4.2)
    axes = fig.subplots(1, len(tiers), squeeze=False)[0]
    # Confidences never fall below 1/k; zoom there, keeping the diagonal square.
    bins = [r for t in tiers for k in ("before", "after") for r in t[f"reliability_{k}"]]
    accs = [r["accuracy"] for r in bins]
    lo = max(0.0, min([1.0 / len(report["labels"]), *accs]) - 0.03)
    for ax, tier in zip(axes, tiers, strict=True):
        ax.plot([lo, 1], [lo, 1], ":", color="black", lw=1, label="perfect calibration")
        for key, style, name in (("after", "-", "after temperature"), ("before", "--", "raw")):
            rows = tier[f"reliability_{key}"]
            ax.plot(
                [r["confidence"] for r in rows], [r["accuracy"] for r in rows], style,
                marker="o", ms=4, label=f"{name} (ECE {tier[f'ece_{key}']:.3f})",
            )  # fmt: skip
        ax.set(
            title=f"{tier['name']} (T = {tier['temperature']:.2f})",
            xlabel="confidence (bin mean)",
            ylabel="accuracy",
            xlim=(lo, 1.0),
            ylim=(lo, 1.0),
            aspect="equal",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Reliability per tier")
    return fig


def _latency(report: dict[str, Any]) -> Figure:
    tiers = report["tiers"]
    fig = _figure(max(5.0, 2.2 * len(tiers) + 2.5), 4.5)
    ax = fig.add_subplot()
    series = (
        ("batch1_p50_ms", "batch 1, p50"),
        ("batch1_p90_ms", "batch 1, p90"),
        ("batch64_per_item_ms", "batch 64, per item"),
    )
    width = 0.8 / len(series)
    values = [[t["latency"][k] for t in tiers] for k, _ in series]
    for s, ((_, label), vals) in enumerate(zip(series, values, strict=True)):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(tiers))]
        bars = ax.bar(xs, vals, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=7, padding=2)
    flat = [v for vals in values for v in vals if v > 0]
    if flat and max(flat) / min(flat) > 30:
        ax.set_yscale("log")
    ax.set_xticks(range(len(tiers)), [t["name"] for t in tiers])
    ax.set(title="Latency per tier (model call only)", ylabel="milliseconds")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _confusion(report: dict[str, Any]) -> Figure:
    labels = report["labels"]
    cm = report["operating_point"]["confusion_matrix"]
    side = max(4.0, 0.6 * len(labels) + 2.5)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, label="examples")
    top = max((v for row in cm for v in row), default=0)
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            color = "white" if v > top / 2 else "black"
            ax.text(j, i, str(v), ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(
        title="Confusion matrix at the operating point",
        xlabel="predicted",
        ylabel="true label",
    )
    return fig
