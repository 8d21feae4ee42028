"""Watching production: shadow evaluation, label feedback and drift alarms.

:class:`Monitor` is what :class:`~tiergate.service.Service` talks to. On the request
path it does O(1) work per answer (:meth:`Monitor.record`: remember the answer for
feedback, maybe start a shadow call; :meth:`Monitor.observe_confidence`: maybe sample a
first-tier confidence for the input-drift test). Everything else (estimates, bounds,
tests, alarms, threshold moves) runs when a shadow verdict or a label arrives, at most
every ``_JUDGE_EVERY_S`` per tier, or when /readyz, /metrics or the dashboard ask.

* :mod:`tiergate.monitor.window` — sliding-window counts and exact intervals;
* :mod:`tiergate.monitor.reference` — what calibration data says (stored in the artifact);
* :mod:`tiergate.monitor.shadow` — background re-answers by the last tier;
* :mod:`tiergate.monitor.feedback` — request id → answer, for true labels;
* :mod:`tiergate.monitor.drift` — accuracy and input-drift alarms, auto-tightening.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tiergate.artifact import CalibrationArtifact
from tiergate.cache.store import CacheStore
from tiergate.config import MonitorConfig
from tiergate.errors import InputError, NotFoundError
from tiergate.metrics import Metrics
from tiergate.monitor.drift import AccuracyJudge, InputDrift, ThresholdChange, _now_iso
from tiergate.monitor.feedback import Answer, FeedbackStore
from tiergate.monitor.reference import AgreementModel, reference_stats
from tiergate.monitor.shadow import Shadow
from tiergate.monitor.window import SuccessWindow, binomial_interval
from tiergate.tier import Tier
from tiergate.types import Result

__all__ = ["Answer", "FeedbackStore", "Monitor", "reference_stats"]

log = logging.getLogger("tiergate.monitor")
_JUDGE_EVERY_S = 0.2
_CHANGES_KEPT = 100

# Called to move a tier's threshold: (tier, new threshold, reason) -> None.
ThresholdSetter = Callable[[str, float, str], None]


class Monitor:
    """Shadow, feedback and drift state of one service (one process)."""

    def __init__(
        self,
        config: MonitorConfig,
        tiers: Sequence[Tier],
        calibration: CalibrationArtifact | None,
        metrics: Metrics,
        *,
        target_accuracy: float | None,
        set_threshold: ThresholdSetter,
        shared: CacheStore | None = None,
        log_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.tiers = tuple(tiers)
        self.metrics = metrics
        self._clock = clock
        self._wall = wall
        self._set_threshold = set_threshold
        self.feedback = FeedbackStore(
            config.feedback.max_items, config.feedback.ttl_s, shared=shared, log_path=log_path,
            clock=wall,
        )  # fmt: skip
        last = self.tiers[-1]
        self.shadow = Shadow(config.shadow, last, self._on_shadow, clock=clock)
        self.changes: deque[ThresholdChange] = deque(maxlen=_CHANGES_KEPT)
        self.received = self.unknown = 0
        self._judged: dict[str, float] = {}
        self.reset(calibration, target_accuracy)

    def __repr__(self) -> str:
        return f"Monitor(shadow={self.shadow!r}, feedback={self.feedback!r})"

    def reset(self, calibration: CalibrationArtifact | None, target: float | None) -> None:
        """Start over for a new calibration: windows, alarms, reference."""
        c = self.config
        self.target = target
        self.confidence = c.drift.confidence
        ref: dict[str, Any] = dict(getattr(calibration, "monitor", None) or {})
        self.reference = ref
        ref_tiers = ref.get("tiers", {})
        judged = [t.name for t in self.tiers[:-1]]
        self.agreement = {t: self._new_window() for t in judged}
        self.models = {t: AgreementModel(ref_tiers.get(t)) for t in judged}
        self.labelled = {t.name: self._new_window() for t in self.tiers}
        self.labelled_cache = {k: self._new_window() for k in ("exact", "semantic")}
        self.judges = {
            t: AccuracyJudge(
                t,
                target if target is not None else 0.0,
                min_samples=c.drift.min_samples,
                auto_tighten=c.drift.auto_tighten,
                step=c.drift.tighten_step,
                wall=self._wall,
            )
            for t in judged
        }
        first = self.tiers[0].name
        hist = ref_tiers.get(first, {}).get("confidence_histogram")
        self.input: InputDrift | None = None
        if hist and len(self.tiers) > 1:
            self.input = InputDrift(
                first, hist, int(ref.get("n_classes", len(self.tiers[0].labels))),
                window=c.drift.input_window, every=c.drift.input_every,
                max_per_s=c.drift.input_max_per_s, pvalue=c.drift.input_pvalue,
                clock=self._clock, wall=self._wall,
            )  # fmt: skip
            self.input.on_change = lambda on: self.metrics.drift_alarm_by(first, "input").set(
                1 if on else 0
            )
        m = self.metrics
        m.accuracy_target.set(target if target is not None else 0.0)
        for t in judged:
            m.drift_alarm_by(t, "accuracy").set(0)
        m.drift_alarm_by(first, "input").set(0)

    def _new_window(self) -> SuccessWindow:
        return SuccessWindow(self.config.window)

    # -- request path: O(1) ------------------------------------------------------------

    def record(self, request_id: str, text: str, result: Result) -> None:
        """Remember an answer for feedback; maybe shadow it. Called once per answer."""
        if result.output is None:
            return
        self.feedback.record(request_id, (
            text, result.output, result.tier, result.cache, result.confidence,
            result.calibration_version, self._wall(),
        ))  # fmt: skip
        if (
            result.cache is None
            and result.degraded is None
            and result.tier is not None
            and result.tier != self.shadow.last.name
            and self.shadow.enabled
        ):
            self.shadow.offer(text, result.tier, result.output)

    def observe_confidence(self, tier: str, confidence: npt.NDArray[np.float64]) -> None:
        """A first-tier batch's confidences (the cascade calls this; one sample at most)."""
        if self.input is not None and tier == self.input.tier and len(confidence):
            self.input.observe(float(confidence[0]))

    # -- verdicts and labels -----------------------------------------------------------

    def _on_shadow(self, tier: str, output: str, label: str, text: str, cost: float) -> None:
        window = self.agreement.get(tier)
        if window is None:
            return
        window.add(output == label)
        m = self.metrics
        m.shadow_samples_by(tier).inc()
        m.shadow_cost.inc(cost)
        if self.config.feedback.log is not None:
            self.feedback.append_log({"input": text, "label": label, "source": "shadow",
                                      "tier": tier, "output": output})  # fmt: skip
        self._maybe_judge(tier)

    async def label(self, request_id: str, label: Any) -> dict[str, Any]:
        """Attach a true label to a recent answer; returns what was learnt."""
        labels = self.tiers[0].labels
        if not isinstance(label, str) or label not in labels:
            raise InputError(f"label must be one of {list(labels)}", field="label")
        if not isinstance(request_id, str) or not request_id:
            raise InputError("request_id must be a non-empty string", field="request_id")
        answer = await self.feedback.find(request_id)
        self.received += 1
        if answer is None:
            self.unknown += 1
            self.metrics.feedback_by("unknown").inc()
            raise NotFoundError(
                f"no recent answer has request id {request_id!r} (answers are kept "
                f"{self.config.feedback.ttl_s:g} s, at most {self.config.feedback.max_items})"
            )
        correct = answer.output == label
        self.metrics.feedback_by("correct" if correct else "wrong").inc()
        if answer.cache is not None:
            self.labelled_cache[answer.cache].add(correct)
        elif answer.tier is not None and answer.tier in self.labelled:
            self.labelled[answer.tier].add(correct)
            if answer.tier in self.judges:
                self._maybe_judge(answer.tier)
        self.feedback.append_log({
            "input": answer.input, "label": label, "source": "feedback",
            "request_id": request_id, "tier": answer.tier, "cache": answer.cache,
            "output": answer.output, "calibration_version": answer.calibration_version,
        })  # fmt: skip
        return {"request_id": request_id, "correct": correct, "output": answer.output,
                "tier": answer.tier, "cache": answer.cache,
                "calibration_version": answer.calibration_version}  # fmt: skip

    # -- judging -----------------------------------------------------------------------

    def estimate(self, tier: str) -> tuple[dict[str, Any], str]:
        """The window's accuracy estimate of ``tier``'s accepted answers and its source."""
        lab = self.labelled[tier]
        if lab.n >= self.config.drift.min_samples:
            iv = lab.window(self.confidence)
            return {"n": iv.n, "estimate": iv.rate, "lower": iv.lower, "upper": iv.upper}, (
                "labelled"
            )
        # On shadow evidence the last tier is the reference: an accepted answer it
        # disagrees with counts as wrong. (The calibration-corrected estimate is shown
        # beside it, but its conditional rates are what drift breaks.)
        iv = self.agreement[tier].window(self.confidence)
        return {"n": iv.n, "estimate": iv.rate, "lower": iv.lower, "upper": iv.upper}, "shadow"

    def _maybe_judge(self, tier: str, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._judged.get(tier, -1e18) < _JUDGE_EVERY_S:
            return
        self._judged[tier] = now
        self.judge(tier)

    def judge(self, tier: str) -> str:
        """Judge ``tier`` now; may move its threshold. Returns the state."""
        judge = self.judges[tier]
        if self.target is None:
            return judge.state
        est, source = self.estimate(tier)
        state, tighten = judge.judge(est["n"], est["estimate"], est["lower"], est["upper"], source)
        self.metrics.drift_alarm_by(tier, "accuracy").set(1 if state == "alarm" else 0)
        if tighten:
            t = next(t for t in self.tiers if t.name == tier)
            old = t.threshold if t.threshold is not None else 0.0
            new = min(1.0, round(old + judge.step, 6))
            if new > old:
                self._set_threshold(tier, new, "drift")
                # Answers accepted under the old threshold say nothing of the new one.
                self.agreement[tier].reset_window()
                self.labelled[tier].reset_window()
        return state

    def record_change(self, tier: str, old: float | None, new: float | None, reason: str) -> None:
        """Log, count and remember a threshold change (by drift, reload or an operator)."""
        change = {"tier": tier, "from": old, "to": new, "reason": reason,
                  "at": _now_iso(self._wall)}  # fmt: skip
        self.changes.append(change)
        self.metrics.threshold_changes_by(tier, reason).inc()
        log.warning("threshold of tier %r: %s -> %s (%s)", tier, old, new, reason)

    # -- reporting ---------------------------------------------------------------------

    def alarms(self) -> list[dict[str, Any]]:
        out = [
            {"tier": t, "kind": "accuracy", "since": j.since, "raised_at": j.raised_at,
             "detail": f"accepted answers below the target {j.target:.3f} ({j.source}"
                       + (f"; {j.raised_at['estimate']:.3f} [{j.raised_at['lower']:.3f}, "
                          f"{j.raised_at['upper']:.3f}] of {j.raised_at['n']:.0f} when raised"
                          if j.raised_at else "") + ")"}
            for t, j in self.judges.items() if j.state == "alarm"
        ]  # fmt: skip
        if self.input is not None and self.input.alarm:
            out.append({"tier": self.input.tier, "kind": "input", "since": self.input.since,
                        "detail": f"confidences unlike the calibration split "
                                  f"(p={self.input.pvalue:.2g})"})  # fmt: skip
        return out

    def describe(self) -> dict[str, Any]:
        """State for /readyz and the dashboard (judges every tier first)."""
        conf = self.confidence
        for t in self.judges:
            self._maybe_judge(t, force=True)
        shadow_tiers = {}
        for t, w in self.agreement.items():
            model = self.models[t]
            shadow_tiers[t] = {
                "window": model.estimate(w.k, w.n, conf),
                "since_start": model.estimate(w.total_k, w.total_n, conf),
                "state": self.judges[t].state,
            }

        def labelled(w: SuccessWindow) -> dict[str, Any]:
            return {"window": _acc(w.window(conf)), "since_start": _acc(w.since_start(conf))}

        return {
            "enabled": True,
            "target_accuracy": self.target,
            "confidence": conf,
            "window": self.config.window,
            "shadow": {**self.shadow.describe(), "tiers": shadow_tiers},
            "labelled": {
                "received": self.received,
                "unknown": self.unknown,
                "remembered": len(self.feedback),
                "tiers": {t: labelled(w) for t, w in self.labelled.items()},
                "cache": {k: labelled(w) for k, w in self.labelled_cache.items()},
            },
            "drift": {
                "alarms": self.alarms(),
                "auto_tighten": self.config.drift.auto_tighten,
                "input": {self.input.tier: self.input.describe()} if self.input else {},
                "threshold_changes": list(self.changes),
            },
        }

    def refresh_metrics(self) -> None:
        """Point-in-time gauges, set at a scrape."""
        m, conf = self.metrics, self.confidence
        for t, w in self.agreement.items():
            self._maybe_judge(t, force=True)
            model = self.models[t]
            for name, (k, n) in (("window", (w.k, w.n)), ("start", (w.total_k, w.total_n))):
                e = model.estimate(k, n, conf)
                m.shadow_accuracy_by(t, name).set(e["estimate"] if e["estimate"] is not None
                                                  else float("nan"))  # fmt: skip
                m.shadow_accuracy_lower_by(t, name).set(e["lower"])
                a = binomial_interval(k, n, conf)
                m.shadow_agreement_by(t, name).set(a.rate if a.rate is not None else float("nan"))
                m.shadow_agreement_lower_by(t, name).set(a.lower)
        for t, w in self.labelled.items():
            for name, iv in (("window", w.window(conf)), ("start", w.since_start(conf))):
                m.labelled_accuracy_by(t, name).set(iv.rate if iv.rate is not None
                                                    else float("nan"))  # fmt: skip
                m.labelled_accuracy_lower_by(t, name).set(iv.lower)
        if self.input is not None and self.input.pvalue is not None:
            m.input_drift_pvalue_by(self.input.tier).set(self.input.pvalue)

    async def aclose(self) -> None:
        await self.shadow.aclose()
        await self.feedback.aclose()


def _acc(iv: Any) -> dict[str, Any]:
    return {"n": iv.n, "correct": iv.k, "accuracy": iv.rate, "lower": iv.lower,
            "upper": iv.upper}  # fmt: skip
