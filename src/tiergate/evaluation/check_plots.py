"""Plots of a `tiergate check` load run: latency over time and latency distribution.

Like :mod:`tiergate.evaluation.plots`, matplotlib is the ``[report]`` extra, imported
only here, and figures are built without pyplot (no global state to clean up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiergate.evaluation.plots import require_report_deps

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_check_plots"]

_DPI = 110
_COLORS = {
    "points": "#1f77b4",
    "p50": "#2ca02c",
    "p99": "#ff7f0e",
    "p999": "#9467bd",
    "slo": "#d62728",
}


def write_check_plots(
    offsets_s: Sequence[float],
    latencies_ms: Sequence[float],
    timeline: Mapping[str, Any],
    out_dir: Path,
    *,
    p99_target_ms: float | None,
    title: str = "",
) -> dict[str, str]:
    """Write ``latency_over_time.png`` and ``latency_distribution.png``; return their names.

    ``offsets_s`` are intended send times from the start of the run, ``latencies_ms``
    the matching latencies, ``timeline`` the per-bucket percentiles (``points`` with
    ``t_s``, ``p50_ms``, ``p99_ms``, and ``bucket_s``).
    """
    require_report_deps()
    out_dir.mkdir(parents=True, exist_ok=True)
    lat = np.clip(np.asarray(latencies_ms, dtype=np.float64), 1e-3, None)
    off = np.asarray(offsets_s, dtype=np.float64)
    figures = {
        "latency_over_time": _over_time(off, lat, timeline, p99_target_ms, title),
        "latency_distribution": _distribution(lat, p99_target_ms, title),
    }
    files = {}
    for name, fig in figures.items():
        fig.savefig(out_dir / f"{name}.png", dpi=_DPI)
        files[name] = f"{name}.png"
    return files


def _figure(width: float = 8.0, height: float = 4.5) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _shown_target(lat: np.ndarray[Any, np.dtype[np.float64]], target: float | None) -> float | None:
    # A target far above every latency would squash the data into one pixel row:
    # leave it off the axes (the legend still names it).
    if target is None or (lat.size and target > 5 * float(lat.max())):
        return None
    return target


def _slo_line(
    ax: Axes,
    lat: np.ndarray[Any, np.dtype[np.float64]],
    p99_target_ms: float | None,
    *,
    vertical: bool = False,
) -> None:
    if p99_target_ms is None:
        return
    label = f"SLO p99 ≤ {p99_target_ms:g} ms"
    if _shown_target(lat, p99_target_ms) is None:
        ax.plot([], [], color=_COLORS["slo"], lw=1.5, ls="--", label=f"{label} (off scale)")
        return
    if vertical:
        ax.axvline(p99_target_ms, color=_COLORS["slo"], lw=1.5, ls="--", label=label)
    else:
        ax.axhline(p99_target_ms, color=_COLORS["slo"], lw=1.5, ls="--", label=label)


def _wide(values: np.ndarray[Any, np.dtype[np.float64]], target: float | None) -> bool:
    # Log scale when the values (and the SLO line) span more than ~1.5 decades.
    span = [*values.tolist(), *([] if target is None else [target])]
    return bool(span) and max(span) / min(span) > 30


def _over_time(
    off: np.ndarray[Any, np.dtype[np.float64]],
    lat: np.ndarray[Any, np.dtype[np.float64]],
    timeline: Mapping[str, Any],
    p99_target_ms: float | None,
    title: str,
) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(off, lat, s=6, alpha=0.35, color=_COLORS["points"], lw=0, label="request")
    pts = timeline["points"]
    half = float(timeline["bucket_s"]) / 2
    xs = [p["t_s"] + half for p in pts]
    ax.plot(xs, [p["p50_ms"] for p in pts], "-o", ms=3, color=_COLORS["p50"], label="p50")
    ax.plot(xs, [p["p99_ms"] for p in pts], "-o", ms=3, color=_COLORS["p99"], label="p99")
    _slo_line(ax, lat, p99_target_ms)
    if lat.size and _wide(lat, _shown_target(lat, p99_target_ms)):
        ax.set_yscale("log")
    ax.set(
        title=f"Latency over time{': ' + title if title else ''}",
        xlabel="intended send time (s)",
        ylabel="latency (ms)",
    )
    ax.grid(alpha=0.3)
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
        title=f"per {timeline['bucket_s']:g} s",
    )  # fmt: skip
    return fig


def _distribution(
    lat: np.ndarray[Any, np.dtype[np.float64]], p99_target_ms: float | None, title: str
) -> Figure:
    from matplotlib.ticker import FuncFormatter

    fig = _figure(10.0, 4.2)
    hist, tail = fig.subplots(1, 2)
    if lat.size == 0:
        return fig
    lo, hi = float(lat.min()), float(lat.max())
    log = _wide(lat, _shown_target(lat, p99_target_ms))
    shown = _shown_target(lat, p99_target_ms)
    top = max(hi, shown or hi) * 1.0001
    bins = np.geomspace(lo, top, 50) if log and top > lo else np.linspace(0, top, 50)
    hist.hist(lat, bins=bins, color=_COLORS["points"], alpha=0.8)
    marks = (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))
    for key, q in marks:
        v = float(np.percentile(lat, q))
        name = "p99.9" if key == "p999" else key
        for ax in (hist, tail):
            ax.axvline(v, color=_COLORS[key], lw=1.2, label=f"{name} {v:.3g} ms")
    _slo_line(hist, lat, p99_target_ms, vertical=True)
    _slo_line(tail, lat, p99_target_ms, vertical=True)
    hist.set(title="Latency histogram", xlabel="latency (ms)", ylabel="requests")
    # Survival function: the share of requests slower than x; p99 is where it hits 1 %.
    xs = np.sort(lat)
    share = 1.0 - np.arange(xs.size) / xs.size
    tail.step(xs, share, where="post", color=_COLORS["points"])
    tail.axhline(0.01, color="gray", lw=0.8, ls=":", label="1 % of requests")
    tail.set_yscale("log")
    tail.set(
        title="Tail: share of requests slower than x",
        xlabel="latency (ms)",
        ylabel="share slower",
        ylim=(max(0.5 / xs.size, 1e-5), 1.05),
    )
    tail.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{100 * y:g} %"))
    for ax in (hist, tail):
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.grid(alpha=0.3)
    hist.legend(fontsize=8)
    tail.legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(f"Latency distribution: {title}")
    return fig
