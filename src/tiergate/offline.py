"""Offline runs over labelled data: score every tier once, then replay policies.

Calibration and evaluation both need each tier's probabilities on every example;
computing them once (in batches) and replaying the cascade with
:func:`tiergate.calibration.cascade_outcome` makes sweeps over thresholds free.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.artifact import FORMAT, artifact_version, write_json_atomic
from tiergate.calibration import (
    BoolArray,
    FloatArray,
    IntArray,
    accuracy_lower_bound,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    learn_then_test,
)
from tiergate.config import ServiceConfig
from tiergate.errors import ConfigError
from tiergate.models.base import check_probabilities
from tiergate.monitor.reference import reference_stats
from tiergate.tier import Tier

__all__ = [
    "DatasetScores",
    "calibrate_config",
    "calibrate_service",
    "cost_order_warnings",
    "default_target",
    "read_labelled",
    "recalibrate_config",
    "score_dataset",
]

Progress = Callable[[str, int, int], None]


def read_labelled(path: Path) -> tuple[list[str], list[str]]:
    """Read ``{"input", "label"}`` JSON Lines (or a CSV with those columns)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    texts: list[str] = []
    labels: list[str] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if "input" not in row or "label" not in row:
                    raise ConfigError(f"{path}: CSV needs columns 'input' and 'label'")
                texts.append(str(row["input"]))
                labels.append(str(row["label"]))
    else:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    texts.append(str(obj["input"]))
                    labels.append(str(obj["label"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigError(
                        f"{path}:{lineno}: expected a JSON object with 'input' and 'label'"
                    ) from exc
    if not texts:
        raise ConfigError(f"{path}: no examples")
    return texts, labels


def cost_order_warnings(names: Sequence[str], costs: Sequence[float]) -> list[str]:
    """Plain words for every tier that costs more per call than a later tier.

    An escalated request pays for every tier it tries, so a cheap-looking first tier
    that in fact costs more than the next one makes the cascade lose money on every
    request it answers, and more on every one it escalates.
    """
    out = []
    for i, (a, ca) in enumerate(zip(names, costs, strict=True)):
        for b, cb in zip(names[i + 1 :], costs[i + 1 :], strict=True):
            if ca > cb:
                out.append(
                    f"tier {a!r} costs more per call ({ca:.3g}) than the later tier {b!r} "
                    f"({cb:.3g}): every request pays for {a!r} first, so this cascade costs "
                    f"more than calling {b!r} alone; reorder the tiers or check their costs"
                )
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class DatasetScores:
    """Every tier's raw probabilities on a labelled set."""

    tier_names: tuple[str, ...]
    labels: tuple[str, ...]
    y: IntArray
    probs: list[FloatArray]
    cpu_s_per_item: list[float]
    batch_latency_s: list[float]

    def confidences(self, temperatures: Sequence[float]) -> list[FloatArray]:
        return [
            apply_temperature(p, t).max(axis=1)
            for p, t in zip(self.probs, temperatures, strict=True)
        ]

    def correct(self) -> list[BoolArray]:
        return [p.argmax(axis=1) == self.y for p in self.probs]

    def subset(self, idx: IntArray) -> DatasetScores:
        return DatasetScores(
            self.tier_names, self.labels, self.y[idx], [p[idx] for p in self.probs],
            self.cpu_s_per_item, self.batch_latency_s,
        )  # fmt: skip


def score_dataset(
    tiers: Sequence[Tier],
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> DatasetScores:
    """Run every tier over every text (raw probabilities, no temperature)."""
    names = tiers[0].labels
    index = {lab: i for i, lab in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ConfigError(
            f"data has labels the models do not know: {unknown[:5]} (models: {list(names)})"
        )
    y = np.array([index[lab] for lab in labels], dtype=np.int64)
    all_probs: list[FloatArray] = []
    cpu: list[float] = []
    lat: list[float] = []
    for tier in tiers:
        order = [tier.labels.index(lab) for lab in names]
        chunks = []
        cpu0, t0 = time.process_time(), time.perf_counter()
        metered: list[float] = []
        step = batch_size if not tier.remote else max(batch_size, len(texts))
        for start in range(0, len(texts), step):
            batches = [
                list(texts[i : i + batch_size])
                for i in range(start, min(start + step, len(texts)), batch_size)
            ]
            for batch, scored in zip(batches, tier.raw_predict(batches), strict=True):
                chunks.append(
                    check_probabilities(scored.probs, len(batch), len(tier.labels), tier.name)[
                        :, order
                    ]
                )
                if scored.costs is not None:
                    metered.extend(scored.costs.tolist())
            if progress:
                progress(tier.name, min(start + step, len(texts)), len(texts))
        if tier.metered and metered:
            # Token-priced: the cost model is what these calls measured.
            tier.cost_per_call = float(np.mean(metered))
        all_probs.append(np.concatenate(chunks))
        cpu.append((time.process_time() - cpu0) / len(texts))
        lat.append((time.perf_counter() - t0) / max(1, len(chunks)))
    return DatasetScores(tuple(t.name for t in tiers), names, y, all_probs, cpu, lat)


def default_target(last_tier_correct: BoolArray, confidence: float) -> float:
    """One point under what the data certify for the last tier alone, in 0.1-point steps.

    "Within a point of the accurate tier", stated as something the calibration set can
    certify: a target of the last tier's *empirical* accuracy minus a point is usually
    beyond a finite-sample bound (at n≈1900 the 95 % bound sits ~1.4 points under the
    empirical accuracy), and a target just under the bound leaves the cascade no room.
    """
    ok = np.asarray(last_tier_correct, dtype=bool)
    bound = accuracy_lower_bound(int(ok.sum()), len(ok), 1.0 - confidence)
    return math.floor((bound - 0.01) * 1000) / 1000


def calibrate_service(
    config: ServiceConfig,
    tiers: Sequence[Tier],
    scores: DatasetScores,
    *,
    target_accuracy: float | None,
    confidence: float,
    data_info: dict[str, Any],
) -> dict[str, Any]:
    """Fit temperatures, run Learn-then-Test, and return the artifact body."""
    correct = scores.correct()
    temps = [fit_temperature(p, scores.y) for p in scores.probs]
    ece = {}
    for name, p, t, ok in zip(scores.tier_names, scores.probs, temps, correct, strict=True):
        ece[name] = {
            "before": expected_calibration_error(p.max(axis=1), ok),
            "after": expected_calibration_error(apply_temperature(p, t).max(axis=1), ok),
            "accuracy": float(ok.mean()),
        }
    if target_accuracy is None:
        target_accuracy = default_target(correct[-1], confidence)
    costs = [t.cost_per_call for t in tiers]  # configured, else measured at load
    ltt = learn_then_test(
        scores.confidences(temps),
        correct,
        costs,
        target_accuracy,
        confidence=confidence,
        n_classes=len(scores.labels),
    )
    body: dict[str, Any] = {
        "format": FORMAT,
        "version": "",
        "service": config.service,
        "method": ltt.method,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "target_accuracy": target_accuracy,
        "confidence": confidence,
        "thresholds": {
            name: thr for name, thr in zip(scores.tier_names[:-1], ltt.thresholds, strict=True)
        },
        "temperatures": dict(zip(scores.tier_names, temps, strict=True)),
        "model_versions": {t.name: t.version for t in tiers},
        "costs": dict(zip(scores.tier_names, costs, strict=True)),
        "ece": ece,
        "achieved": ltt.to_dict(),
        "warnings": cost_order_warnings(scores.tier_names, costs),
        "data": data_info,
        # What the monitor should see on traffic like this data (tiergate.monitor).
        "monitor": reference_stats(
            scores.tier_names,
            scores.confidences(temps),
            [p.argmax(axis=1) for p in scores.probs],
            scores.y,
            ltt.thresholds,
            len(scores.labels),
        ),
    }
    body["version"] = artifact_version(body)
    return body


def calibrate_config(
    config_path: Path,
    data_path: Path,
    *,
    target_accuracy: float | None,
    confidence: float = 0.95,
    out: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """`tiergate calibrate`: score the data, certify thresholds, write the artifact.

    Raises :class:`~tiergate.errors.CalibrationError` (writing nothing) if infeasible.
    """
    from tiergate.config import load_config
    from tiergate.service import Service

    config = load_config(config_path, calibrating=True)
    config = config.model_copy(update={"calibration": None})
    service = Service.from_config(config, require_calibration=False)
    try:
        texts, labels = read_labelled(data_path)
        scores = score_dataset(service.tiers, texts, labels, progress=progress)
    finally:
        service.close()
    info = {"path": str(data_path), "sha256": file_sha256(data_path), "n": len(texts)}
    body = calibrate_service(
        config, service.tiers, scores,
        target_accuracy=target_accuracy, confidence=confidence, data_info=info,
    )  # fmt: skip
    write_json_atomic(out, body)
    return body


def read_feedback(
    path: Path, sources: Sequence[str]
) -> tuple[list[str], list[str], dict[str, int]]:
    """Labelled rows of a feedback log (``monitor.feedback.log``) from ``sources``.

    One example per input: a text labelled twice keeps its latest label (labels are
    corrections as often as repeats). Returns texts, labels and rows used per source.
    """
    if not Path(path).is_file():
        raise ConfigError(f"feedback file not found: {path}")
    latest: dict[str, tuple[str, str]] = {}
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = str(row["input"]), str(row["label"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{lineno}: expected 'input' and 'label'") from exc
            source = str(row.get("source", "feedback"))
            if source in sources:
                latest.pop(text, None)  # keep insertion order = order of the latest label
                latest[text] = (label, source)
    used: dict[str, int] = {s: 0 for s in sources}
    for _, source in latest.values():
        used[source] += 1
    if not latest:
        raise ConfigError(f"{path}: no labelled rows from {', '.join(sources)}")
    return list(latest), [lab for lab, _ in latest.values()], used


def recalibrate_config(
    config_path: Path,
    feedback_path: Path,
    *,
    sources: Sequence[str] = ("feedback",),
    target_accuracy: float | None = None,
    confidence: float | None = None,
    out: Path,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`tiergate recalibrate`: a new artifact from labelled feedback, and the old one's
    numbers on the same data (``None`` if the config had no calibration).

    Target and confidence default to the running artifact's. Writes ``out`` only if
    the target is feasible on the feedback (else :class:`CalibrationError`).
    """
    from tiergate.artifact import read_artifact
    from tiergate.calibration import accuracy_lower_bound, cascade_outcome
    from tiergate.config import load_config
    from tiergate.service import Service

    config = load_config(config_path, calibrating=True)
    old = None
    if config.calibration is not None and Path(config.calibration).is_file():
        old = read_artifact(config.calibration)
    target = target_accuracy if target_accuracy is not None else (old and old.target_accuracy)
    conf = confidence if confidence is not None else ((old and old.confidence) or 0.95)
    texts, labels = read_feedback(feedback_path, sources)[:2]
    service = Service.from_config(
        config.model_copy(update={"calibration": None}), require_calibration=False
    )
    try:
        scores = score_dataset(service.tiers, texts, labels, progress=progress)
    finally:
        service.close()
    info = {"path": str(feedback_path), "sha256": file_sha256(feedback_path), "n": len(texts),
            "sources": list(sources)}  # fmt: skip
    body = calibrate_service(
        config, service.tiers, scores, target_accuracy=target or None, confidence=conf,
        data_info=info,
    )  # fmt: skip
    before = None
    if old is not None:
        temps = [old.temperatures.get(n, 1.0) for n in scores.tier_names]
        thresholds = [old.thresholds.get(n, 1.0) for n in scores.tier_names[:-1]]
        costs = [t.cost_per_call for t in service.tiers]
        outcome = cascade_outcome(scores.confidences(temps), scores.correct(), costs, thresholds)
        k = int(outcome.correct.sum())
        before = {
            "version": old.version,
            "thresholds": dict(old.thresholds),
            "target_accuracy": old.target_accuracy,
            "accuracy": outcome.accuracy,
            "accuracy_lower_bound": accuracy_lower_bound(k, len(texts), 1.0 - conf),
            "escalation_rate": outcome.escalation_rate,
            "expected_cost": float(outcome.cost.mean()),
        }
    write_json_atomic(out, body)
    return body, before
