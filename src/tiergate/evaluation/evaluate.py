"""`tiergate evaluate`: measure a config's cascade on labelled data against baselines.

Every tier scores the data once; the cascade and every baseline are then replayed
offline (:func:`tiergate.calibration.cascade_outcome`), so sweeping thresholds is free.

**Routing baselines.** They all act on the first tier's decision only: a request the
first tier does not keep goes to the *rest* of the cascade (tiers 2..N at their
operating thresholds; with two tiers simply the last tier). With ``n`` examples,
``k0`` of them right on the first tier and ``k_rest`` right on the rest, a router
that escalates ``e`` of them (escalation rate ``r = e / n``) is right on

- *random routing*: ``(1 - r) * k0 + r * k_rest`` examples in expectation (exact);
- *oracle routing*: ``k0 + min(e, G1) - max(0, e - (n - G4))`` examples, where ``G1``
  counts examples the first tier gets wrong and the rest right, ``G4`` the reverse.
  The oracle escalates the first tier's mistakes first (those the rest fixes, then
  those it does not), then correct answers the rest keeps, and last those the rest
  would break. No router escalating ``e`` examples can be right more often, so it
  bounds the cascade curve from above at every escalation rate. With ``e`` equal to
  the number of the first tier's mistakes it is exactly "escalate the first tier's
  mistakes", the oracle router reported as a baseline.

The cascade curve sweeps the first tier's threshold over every distinct confidence
(later thresholds fixed); its gap to random routing is computed in exact integer
arithmetic, so it is exactly zero at the two ends, where both routers coincide.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.artifact import write_json_atomic
from tiergate.calibration import (
    BoolArray,
    FloatArray,
    IntArray,
    cascade_outcome,
    expected_calibration_error,
    reliability_table,
)
from tiergate.errors import ConfigError
from tiergate.evaluation.cache_replay import replay_service, semantic_replay_config
from tiergate.offline import (
    DatasetScores,
    cost_order_warnings,
    file_sha256,
    read_labelled,
    score_dataset,
)
from tiergate.tier import Tier

__all__ = ["FORMAT", "evaluate_config", "routing_curves"]

FORMAT = "tiergate.evaluation/1"
Progress = Callable[[str, int, int], None]

_NEVER = 1.0 + 1e-9  # a threshold no confidence reaches: escalate everything
_LATENCY_CALLS = 100
_BATCH_SIZE = 64
_MAX_CURVE_POINTS = 1001  # stored points; gaps are computed over all of them


def evaluate_config(
    config_path: Path,
    data_path: Path,
    *,
    report_dir: Path,
    progress: Progress | None = None,
    seed: int = 0,
    semantic_threshold: float | None = None,
    compare: Sequence[Path] = (),
) -> dict[str, Any]:
    """Evaluate a config on labelled data; write ``report.json``, ``report.html``, PNGs.

    ``compare``: more configs evaluated on the same data, side by side with this one in
    ``report["comparison"]`` (one row per config: shares, cost, accuracy, both relative
    to always using each config's last tier, and the gaps to oracle and random routing).
    A tier with the same model version in several configs is scored once.

    ``progress(stage, done, total)`` is called with stages ``"score <tier>"``,
    ``"latency <tier>"`` and ``"report"``. ``seed`` picks the texts timed for latency.

    With ``semantic_threshold`` or an enabled semantic cache in the config, a trace of
    up to 1000 requests with repeats and paraphrases is also replayed with and without
    the semantic cache (exact cache off; stage ``"semantic replay"``), in
    ``report["semantic_cache"]`` (else ``None``); see
    :mod:`tiergate.evaluation.cache_replay`.
    Returns the report (the body of ``report.json``).
    """
    from tiergate.config import load_config
    from tiergate.evaluation.plots import require_report_deps, write_html, write_plots
    from tiergate.service import Service

    require_report_deps()
    config = load_config(config_path)
    if len(config.tiers) < 2:
        raise ConfigError(f"{config_path}: evaluate needs a cascade of at least two tiers")
    texts, labels = read_labelled(data_path)
    replay_config = semantic_replay_config(config, semantic_threshold)
    # The replay config differs only in its caches, which scoring does not use.
    service = Service.from_config(replay_config or config, require_calibration=True)
    scored: dict[str, _TierScore] = {}
    try:
        tiers = service.tiers
        scores, latency = _score_tiers(tiers, texts, labels, seed, progress, scored)
        semantic_cache = None
        if replay_config is not None:
            tick = None if progress is None else _prefixed(progress, "semantic")
            replay = replay_service(
                service, texts, labels, n=min(1000, len(texts)), seed=seed,
                progress=None if tick is None else (lambda i, k: tick("replay", i, k)),
            )  # fmt: skip
            semantic_cache = asyncio.run(replay)
    finally:
        service.close()
    report: dict[str, Any] = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "service": config.service,
        "config": str(config.path or config_path),
        "calibration_version": service.cascade.calibration_version,
        "data": {"path": str(data_path), "sha256": file_sha256(data_path), "n": len(texts)},
        "labels": list(scores.labels),
    }
    report.update(_analyse(tiers, scores, latency))
    report["semantic_cache"] = semantic_cache
    report["comparison"] = None
    if compare:
        rows = [_comparison_row(config.path or config_path, service.cascade.calibration_version,
                                scores, report)]  # fmt: skip
        for other_path in compare:
            other = load_config(other_path)
            if len(other.tiers) < 2:
                raise ConfigError(f"{other_path}: evaluate needs a cascade of at least two tiers")
            svc = Service.from_config(other, require_calibration=True)
            try:
                sc, lat = _score_tiers(svc.tiers, texts, labels, seed, progress, scored)
                rows.append(_comparison_row(other.path or other_path,
                                            svc.cascade.calibration_version, sc,
                                            _analyse(svc.tiers, sc, lat)))  # fmt: skip
            finally:
                svc.close()
        report["comparison"] = rows
    if progress:
        progress("report", 0, 1)
    report["plots"] = write_plots(report, report_dir)
    report["summary"] = _summary(report)
    write_json_atomic(report_dir / "report.json", report)
    write_html(report, report_dir)
    if progress:
        progress("report", 1, 1)
    return report


@dataclass(frozen=True)
class _TierScore:
    probs: FloatArray
    cpu_s_per_item: float
    batch_latency_s: float
    latency: dict[str, float]


def _score_tiers(
    tiers: Sequence[Tier],
    texts: Sequence[str],
    labels: Sequence[str],
    seed: int,
    progress: Progress | None,
    scored: dict[str, _TierScore],
) -> tuple[DatasetScores, list[dict[str, float]]]:
    """Score every tier on the data; tiers already in ``scored`` (by version) are reused."""
    names = tiers[0].labels
    for t in tiers:
        if t.version in scored:
            continue
        one = score_dataset(
            [t], texts, labels, batch_size=_BATCH_SIZE, progress=_prefixed(progress, "score")
        )
        scored[t.version] = _TierScore(  # columns in t.labels order
            one.probs[0], one.cpu_s_per_item[0], one.batch_latency_s[0],
            _batch1_latency(t, texts, seed, progress),
        )  # fmt: skip
    index = {lab: i for i, lab in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ConfigError(
            f"data has labels the models do not know: {unknown[:5]} (models: {list(names)})"
        )
    y = np.array([index[lab] for lab in labels], dtype=np.int64)
    rows = [scored[t.version] for t in tiers]
    probs = [
        r.probs[:, [t.labels.index(lab) for lab in names]] for r, t in zip(rows, tiers, strict=True)
    ]
    scores = DatasetScores(
        tuple(t.name for t in tiers), tuple(names), y, probs,
        [r.cpu_s_per_item for r in rows], [r.batch_latency_s for r in rows],
    )  # fmt: skip
    return scores, [r.latency for r in rows]


def _comparison_row(
    path: Path, calibration_version: str | None, scores: DatasetScores, analysis: dict[str, Any]
) -> dict[str, Any]:
    """One config's economics at its operating point (a row of ``report["comparison"]``)."""
    op, base = analysis["operating_point"], analysis["baselines"]
    last = base["always_last"]
    shares = op["tier_shares"]
    any_right = np.logical_or.reduce(scores.correct())
    return {
        "config": str(path),
        "calibration_version": calibration_version,
        "tiers": list(scores.tier_names),
        "tier_shares": shares,
        "reaching_last": shares[scores.tier_names[-1]],
        "accuracy": op["accuracy"],
        "always_last_accuracy": last["accuracy"],
        "accuracy_vs_always_last": op["accuracy"] / last["accuracy"] if last["accuracy"] else None,
        "cost_per_1k": op["cost_per_1k"],
        "always_last_cost_per_1k": last["cost_per_1k"],
        "cost_vs_always_last": op["cost_vs_always_last"],
        "escalation_rate": op["escalation_rate"],
        "oracle_accuracy_at_same_escalation": op["oracle_accuracy_at_same_escalation"],
        "gap_to_oracle": op["gap_to_oracle"],
        "random_accuracy_at_same_escalation": op["random_accuracy_at_same_escalation"],
        "gap_to_random": op["gap_to_random"],
        # No router over these tiers can beat this: some tier is right.
        "any_tier_right": float(any_right.mean()),
        "thresholds": op["thresholds"],
        "cost_per_call": {t["name"]: t["cost_per_call"] for t in analysis["tiers"]},
    }


def _prefixed(progress: Progress | None, stage: str) -> Progress | None:
    if progress is None:
        return None
    cb = progress
    return lambda name, done, total: cb(f"{stage} {name}", done, total)


def _batch1_latency(
    tier: Tier, texts: Sequence[str], seed: int, progress: Progress | None
) -> dict[str, float]:
    # Raw adapter calls, one text each: what one unbatched request costs the model.
    rng = np.random.default_rng(seed)
    sample = [texts[int(i)] for i in rng.integers(0, len(texts), _LATENCY_CALLS)]
    tier.raw_predict([sample[:1]])  # warm-up
    ms = []
    for i, text in enumerate(sample, start=1):
        t0 = time.perf_counter()
        tier.raw_predict([[text]])
        ms.append((time.perf_counter() - t0) * 1000.0)
        if progress:
            progress(f"latency {tier.name}", i, len(sample))
    return {
        "batch1_p50_ms": float(np.percentile(ms, 50)),
        "batch1_p90_ms": float(np.percentile(ms, 90)),
        "batch1_calls": len(ms),
    }


def _analyse(
    tiers: Sequence[Tier], scores: DatasetScores, latency: Sequence[dict[str, float]]
) -> dict[str, Any]:
    n = len(scores.y)
    temps = [t.temperature for t in tiers]
    costs = [t.cost_per_call for t in tiers]
    thresholds = [float(t.threshold if t.threshold is not None else _NEVER) for t in tiers[:-1]]
    conf = scores.confidences(temps)
    correct = scores.correct()
    n_batches = -(-n // _BATCH_SIZE)

    tier_rows = []
    for i, t in enumerate(tiers):
        raw_conf = scores.probs[i].max(axis=1)
        tier_rows.append(
            {
                **t.describe(),
                "accuracy": float(correct[i].mean()),
                "ece_before": expected_calibration_error(raw_conf, correct[i]),
                "ece_after": expected_calibration_error(conf[i], correct[i]),
                "reliability_before": reliability_table(raw_conf, correct[i]),
                "reliability_after": reliability_table(conf[i], correct[i]),
                "latency": {
                    **latency[i],
                    "batch64_ms": scores.batch_latency_s[i] * 1000.0,
                    "batch64_per_item_ms": scores.batch_latency_s[i] * 1000.0 * n_batches / n,
                    "cpu_ms_per_item": scores.cpu_s_per_item[i] * 1000.0,
                },
            }
        )

    op = cascade_outcome(conf, correct, costs, thresholds)
    rest = cascade_outcome(conf[1:], correct[1:], costs[1:], thresholds[1:])
    curves = routing_curves(conf[0], correct[0], rest.correct, rest.cost, costs[0])
    e_op = int((op.answered_by > 0).sum())
    stacked = np.stack(scores.probs)
    pred = stacked[op.answered_by, np.arange(n)].argmax(axis=1)
    k = len(scores.labels)
    confusion = np.bincount(scores.y * k + pred, minlength=k * k).reshape(k, k)
    c_last = costs[-1]

    def point(accuracy: float, escalation: float, cost: float) -> dict[str, Any]:
        return {
            "accuracy": accuracy,
            "escalation_rate": escalation,
            "mean_cost": cost,
            "cost_per_1k": cost * 1000.0,
            "cost_vs_always_last": cost / c_last if c_last > 0 else None,
        }

    counts, e_arr = _Counts.of(correct[0], rest.correct), np.array([e_op])
    oracle_at_op = float(counts.oracle_right(e_arr)[0]) / n
    random_at_op = float(counts.random_num(e_arr)[0]) / n**2
    operating = {
        **point(op.accuracy, op.escalation_rate, float(op.cost.mean())),
        "thresholds": {t.name: thr for t, thr in zip(tiers[:-1], thresholds, strict=True)},
        "tier_shares": dict(zip(scores.tier_names, op.tier_shares(len(tiers)), strict=True)),
        "confusion_matrix": confusion.tolist(),
        "random_accuracy_at_same_escalation": random_at_op,
        "gap_to_random": op.accuracy - random_at_op,
        "oracle_accuracy_at_same_escalation": oracle_at_op,
        "gap_to_oracle": oracle_at_op - op.accuracy,
    }
    acc0, acc_rest = float(correct[0].mean()), float(rest.correct.mean())
    rest_cost = float(rest.cost.mean())
    r_op = op.escalation_rate
    oracle = curves["oracle_point"]
    baselines = {
        "always_first": point(acc0, 0.0, costs[0]),
        "always_last": point(float(correct[-1].mean()), 1.0, c_last),
        "random": point(random_at_op, r_op, costs[0] + r_op * rest_cost),
        "oracle": point(oracle["accuracy"], oracle["escalation_rate"], oracle["mean_cost"]),
        "random_line": [
            point(acc0, 0.0, costs[0]),
            point(acc_rest, 1.0, costs[0] + rest_cost),
        ],
    }
    return {
        "warnings": cost_order_warnings(scores.tier_names, costs),
        "tiers": tier_rows,
        "operating_point": operating,
        "baselines": baselines,
        "curve": {"swept_tier": tiers[0].name, **curves["curve"]},
        "oracle_curve": curves["oracle_curve"],
    }


@dataclass(frozen=True)
class _Counts:
    # Sufficient statistics of the routing baselines (see module doc).
    n: int
    k0: int
    k_rest: int
    g1: int
    g4: int

    @classmethod
    def of(cls, ok0: BoolArray, rest_ok: BoolArray) -> _Counts:
        return cls(
            len(ok0), int(ok0.sum()), int(rest_ok.sum()),
            int((~ok0 & rest_ok).sum()), int((ok0 & ~rest_ok).sum()),
        )  # fmt: skip

    def random_num(self, e: IntArray) -> IntArray:
        """``n`` times the expected number right after escalating ``e`` at random (exact)."""
        out: IntArray = (self.n - e) * self.k0 + e * self.k_rest
        return out

    def oracle_right(self, e: IntArray) -> IntArray:
        """Most examples any router escalating ``e`` of them can get right."""
        out: IntArray = self.k0 + np.minimum(e, self.g1) - np.maximum(0, e - (self.n - self.g4))
        return out


def routing_curves(
    conf0: FloatArray,
    ok0: BoolArray,
    rest_ok: BoolArray,
    rest_cost: FloatArray,
    cost0: float,
) -> dict[str, Any]:
    """The first tier's threshold sweep with random and oracle routing (see module doc).

    ``rest_ok``/``rest_cost`` say, per example, whether the rest of the cascade is
    right and what it costs if the example escalates. Returns ``curve`` (points
    sorted by escalation rate, with the minimum gap to random routing over all of
    them), ``oracle_curve`` and ``oracle_point``.
    """
    c = _Counts.of(ok0, rest_ok)
    n, k0, k_rest = c.n, c.k0, c.k_rest
    ok0_i, rest_i = ok0.astype(np.int64), rest_ok.astype(np.int64)

    # Cascade: accept the `a` most confident on the first tier (ties move together).
    order = np.argsort(-conf0, kind="stable")
    cum_ok0 = np.concatenate([[0], np.cumsum(ok0_i[order])])
    cum_rest = np.concatenate([[0], np.cumsum(rest_i[order])])
    cum_rcost = np.concatenate([[0.0], np.cumsum(rest_cost[order])])
    distinct = np.unique(conf0)  # ascending thresholds: escalation rate rises
    accepted = n - np.searchsorted(np.sort(conf0), distinct, side="left")
    thr = np.concatenate([distinct, [_NEVER]])
    a = np.concatenate([accepted, [0]])
    e = n - a
    right = cum_ok0[a] + (k_rest - cum_rest[a])
    cost = cost0 + (cum_rcost[-1] - cum_rcost[a]) / max(n, 1)
    gap_num = n * right - c.random_num(e)
    interior = (e > 0) & (e < n)
    worst = int(np.argmin(np.where(interior, gap_num, np.iinfo(np.int64).max)))
    min_gap = float(gap_num[worst]) / n**2 if interior.any() else 0.0

    # Oracle cost: within a priority group, escalate the cheapest-to-serve first.
    group = np.where(ok0, np.where(rest_ok, 2, 3), np.where(rest_ok, 0, 1))
    prio = np.lexsort((rest_cost, group))
    oracle_cost = cost0 + np.concatenate([[0.0], np.cumsum(rest_cost[prio])]) / max(n, 1)

    keep = np.arange(len(e))
    if len(keep) > _MAX_CURVE_POINTS:
        keep = np.unique(np.round(np.linspace(0, len(e) - 1, _MAX_CURVE_POINTS)).astype(int))
    curve_points = [
        {
            "threshold": float(thr[j]),
            "escalation_rate": float(e[j]) / n,
            "accuracy": float(right[j]) / n,
            "mean_cost": float(cost[j]),
            "random_accuracy": float(c.random_num(e[j : j + 1])[0]) / n**2,
            "gap_to_random": float(gap_num[j]) / n**2,
            "oracle_accuracy": float(c.oracle_right(e[j : j + 1])[0]) / n,
        }
        for j in keep
    ]
    mistakes = n - k0
    oracle_e = np.unique(np.concatenate([e[keep], [0, c.g1, mistakes, n - c.g4, n]]))
    oracle_curve = [
        {
            "escalation_rate": float(x) / n,
            "accuracy": float(c.oracle_right(np.array([x]))[0]) / n,
            "mean_cost": float(oracle_cost[x]),
        }
        for x in oracle_e
    ]
    below = interior & (gap_num < 0)
    below_e = e[below] / n
    return {
        "curve": {
            "n_points": len(e),
            "points": curve_points,
            "min_gap_to_random": min_gap,
            "min_gap_at_escalation": float(e[worst]) / n if interior.any() else None,
            "min_gap_examples": float(gap_num[worst]) / n if interior.any() else 0.0,
            "points_below_random": int(below.sum()),
            "below_random_escalation_range": (
                [float(below_e.min()), float(below_e.max())] if below.any() else None
            ),
            "above_random_everywhere": not bool(below.any()),
        },
        "oracle_curve": oracle_curve,
        "oracle_point": {
            "escalation_rate": mistakes / n,
            "accuracy": (k0 + c.g1) / n,
            "mean_cost": float(oracle_cost[mistakes]),
        },
    }


def _summary(report: dict[str, Any]) -> list[str]:
    op, base, curve = report["operating_point"], report["baselines"], report["curve"]
    first, last = report["tiers"][0]["name"], report["tiers"][-1]["name"]
    pct = "{:.1%}".format
    pts = "{:+.2f} points".format
    out = [
        f"At the operating point the cascade escalates {pct(op['escalation_rate'])} of "
        f"requests from {first} and is right on {pct(op['accuracy'])}; always using {last} "
        f"is right on {pct(base['always_last']['accuracy'])}"
        + (
            f" and costs {1 / op['cost_vs_always_last']:.2f}× as much."
            if op["cost_vs_always_last"]
            else "."
        ),
        f"Gap to the oracle: an oracle router escalating the same share would be right on "
        f"{pct(op['oracle_accuracy_at_same_escalation'])}, "
        f"{100 * op['gap_to_oracle']:.1f} points above the cascade; the oracle that "
        f"escalates exactly {first}'s mistakes ({pct(base['oracle']['escalation_rate'])} "
        f"escalated) is right on {pct(base['oracle']['accuracy'])}.",
    ]
    worst = (
        f"{pts(100 * curve['min_gap_to_random'])}, {curve['min_gap_examples']:+.2f} examples, "
        f"at {pct(curve['min_gap_at_escalation'])} escalated"
    )
    for row in report.get("comparison") or []:
        out.append(
            f"{Path(row['config']).name} ({' → '.join(row['tiers'])}): right on "
            f"{pct(row['accuracy'])} ({pct(row['accuracy_vs_always_last'])} of always "
            f"{row['tiers'][-1]}) at {pct(row['cost_vs_always_last'])} of its cost, "
            f"{pct(row['reaching_last'])} reaching {row['tiers'][-1]}, "
            f"{100 * row['gap_to_oracle']:.1f} points under the oracle."
        )
    if curve["min_gap_at_escalation"] is None:
        out.append("The cascade curve has no point strictly between the two ends to compare.")
    elif curve["above_random_everywhere"]:
        out.append(
            "The cascade is at or above random routing at every escalation rate "
            f"(smallest margin {worst})."
        )
    else:
        lo, hi = curve["below_random_escalation_range"]
        out.append(
            f"The cascade falls below random routing at {curve['points_below_random']} of "
            f"{curve['n_points']} escalation rates, all between {pct(lo)} and {pct(hi)} "
            f"escalated (worst {worst})."
        )
    return out
