"""Watching production: windows, intervals, shadow, feedback, drift, reload (no sleeping)."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from tiergate.artifact import FORMAT
from tiergate.config import load_config
from tiergate.errors import ConfigError, InputError, NotFoundError
from tiergate.monitor.drift import InputDrift
from tiergate.monitor.feedback import Answer, FeedbackStore
from tiergate.monitor.reference import BINS, AgreementModel, confidence_bin, reference_stats
from tiergate.monitor.window import SuccessWindow, binomial_interval
from tiergate.service import Service
from tiergate.testing import ManualClock, ScriptedModel, metric_total


def test_window_keeps_the_last_n_but_counts_all_since_start() -> None:
    w = SuccessWindow(3)
    for ok in (True, True, False, True):
        w.add(ok)
    assert (w.k, w.n) == (2, 3)  # the first True fell out
    w.add(False)
    assert (w.k, w.n) == (1, 3)
    assert (w.total_k, w.total_n) == (3, 5)
    w.reset_window()
    assert w.window(0.95).n == 0 and w.since_start(0.95).n == 5


def test_binomial_interval_is_clopper_pearson() -> None:
    iv = binomial_interval(45, 50, 0.95)
    assert iv.rate == 0.9
    assert iv.lower == pytest.approx(stats.beta.ppf(0.025, 45, 6))
    assert iv.upper == pytest.approx(stats.beta.ppf(0.975, 46, 5))
    assert binomial_interval(50, 50, 0.95).upper == 1.0
    assert binomial_interval(0, 50, 0.95).lower == 0.0
    assert binomial_interval(0, 0, 0.95).rate is None


def test_agreement_is_corrected_by_what_calibration_saw() -> None:
    # Calibration: when the last tier agrees the cheap tier is right 95 % of the time,
    # when it disagrees 40 % (the last tier is wrong there more often than not).
    ref = {"agree": 800, "agree_correct": 760, "disagree": 200, "disagree_correct": 80}
    est = AgreementModel(ref).estimate(80, 100, 0.95)
    assert est["estimate"] == pytest.approx(0.8 * 0.95 + 0.2 * 0.40)
    assert est["lower"] < est["estimate"] < est["upper"]
    raw = AgreementModel(None).estimate(80, 100, 0.95)
    assert raw["estimate"] == 0.8 and raw["reference"] == "last_tier"


def test_reference_stats_counts_accepted_answers_and_agreement() -> None:
    y = np.array([0, 0, 1, 1, 1])
    conf_fast = np.array([0.95, 0.6, 0.99, 0.7, 0.92])
    pred_fast = np.array([0, 1, 1, 0, 0])
    pred_last = np.array([0, 0, 1, 1, 1])
    ref = reference_stats(("fast", "last"), [conf_fast, np.full(5, 0.9)],
                          [pred_fast, pred_last], y, [0.9], 2)  # fmt: skip
    fast = ref["tiers"]["fast"]
    # accepted: items 0, 2, 4; right: 0 and 2; the last tier agrees on 0 and 2.
    assert (fast["accepted"], fast["accepted_correct"]) == (3, 2)
    assert (fast["agree"], fast["agree_correct"], fast["disagree"]) == (2, 2, 1)
    assert ref["tiers"]["last"]["reached"] == 2
    assert sum(fast["confidence_histogram"]) == 5
    assert confidence_bin(0.5, 2) == 0 and confidence_bin(1.0, 2) == BINS - 1


def test_input_drift_alarms_on_a_shifted_confidence_distribution() -> None:
    rng = np.random.default_rng(0)
    ref_conf = rng.uniform(0.5, 1.0, 4000)
    reference = np.bincount([confidence_bin(c, 2) for c in ref_conf], minlength=BINS)
    clock = ManualClock()
    drift = InputDrift("fast", reference.tolist(), 2, window=300, every=100, max_per_s=10,
                       pvalue=0.001, clock=clock)  # fmt: skip
    for c in rng.uniform(0.5, 1.0, 600):
        clock.advance(0.1)
        drift.observe(float(c))
    assert not drift.alarm and drift.tests >= 2
    dropped = drift.tests
    drift.observe(0.99)  # within the sampling gap: ignored
    assert drift.tests == dropped
    for c in rng.uniform(0.5, 0.6, 400):  # unsure about everything: a new kind of input
        clock.advance(0.1)
        drift.observe(float(c))
    assert drift.alarm and drift.pvalue is not None and drift.pvalue < 1e-6


CONFIG = """
service: watched
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.000001
    threshold: %(threshold)s
  - name: accurate
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
%(extra)s
monitor:
  shadow: {rate: %(rate)s, max_per_s: 1000, max_inflight: 1000}
  drift: {min_samples: 20, auto_tighten: %(tighten)s, tighten_step: 0.04}
  feedback: {max_items: 50, log: feedback.jsonl}
"""


def _service(tmp_path: Path, *, fast: ScriptedModel, accurate: ScriptedModel, rate: float = 1.0,
             tighten: bool = False, threshold: Any = 0.8, extra: str = "slo: {accuracy: 0.9}",
             ) -> Service:  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG % {"threshold": threshold, "rate": rate, "tighten": str(tighten).lower(),
                              "extra": extra})  # fmt: skip
    return Service.from_config(load_config(path), adapters={"fast": fast, "accurate": accurate},
                               measure_costs=False)  # fmt: skip


def _positive(_: str) -> float:
    return 0.95


def _negative(_: str) -> float:
    return 0.05


async def _send(service: Service, texts: list[str]) -> list[Any]:
    out = [await service.predict(t, request_id=f"r{i}") for i, t in enumerate(texts)]
    assert service.monitor is not None
    await service.monitor.shadow.drain()
    return out


def test_shadow_agreement_is_measured_off_the_response(tmp_path: Path) -> None:
    # The fast tier is confidently positive; the last tier says negative on half.
    service = _service(
        tmp_path,
        fast=ScriptedModel(_positive),
        accurate=ScriptedModel(lambda t: 0.9 if int(t.split()[-1]) % 2 else 0.1),
    )
    results = asyncio.run(_send(service, [f"text {i}" for i in range(40)]))
    assert all(r.tier == "fast" and r.output == "positive" for r in results)
    assert all(r.cost == pytest.approx(0.000001) for r in results)  # shadow not billed
    assert service.monitor is not None
    shadow = service.monitor.describe()["shadow"]
    window = shadow["tiers"]["fast"]["window"]
    assert (window["n"], window["agree"]) == (40, 20)
    assert window["lower"] < 0.5 < window["upper"]
    assert shadow["cost"] == pytest.approx(40 * 0.0001)
    text = service.metrics_text().decode()
    assert metric_total(text, "tiergate_shadow_samples_total", tier="fast") == 40
    assert metric_total(text, "tiergate_shadow_accuracy", tier="fast", window="window") == 0.5


def test_shadow_respects_its_rate_and_caps(tmp_path: Path) -> None:
    service = _service(tmp_path, fast=ScriptedModel(_positive), accurate=ScriptedModel(_positive),
                       rate=0.0)  # fmt: skip
    asyncio.run(_send(service, ["a", "b", "c"]))
    assert service.monitor is not None and service.monitor.shadow.sent == 0
    shadow = service.monitor.shadow
    shadow.config = shadow.config.model_copy(update={"rate": 1.0})
    shadow._calls.tokens = 1.0  # one call left this second
    shadow._calls.rate = 0.0

    async def offer() -> list[bool]:
        return [shadow.offer("x", "fast", "positive") for _ in range(3)]

    assert asyncio.run(offer()) == [True, False, False]
    assert shadow.dropped["rate_cap"] == 2


def test_feedback_gives_the_real_accuracy_per_tier_and_cache(tmp_path: Path) -> None:
    service = _service(tmp_path, fast=ScriptedModel(_positive), accurate=ScriptedModel(_positive),
                       rate=0.0)  # fmt: skip
    monitor = service.monitor
    assert monitor is not None

    async def run() -> None:
        await service.predict("good film", request_id="a")
        await service.predict("good film", request_id="b")  # exact cache hit
        assert (await service.feedback("a", "positive"))["correct"] is True
        assert (await service.feedback("b", "negative"))["correct"] is False
        with pytest.raises(NotFoundError, match="no recent answer"):
            await service.feedback("never-seen", "positive")
        with pytest.raises(InputError, match="label must be one of"):
            await service.feedback("a", "neutral")

    asyncio.run(run())
    labelled = monitor.describe()["labelled"]
    assert labelled["tiers"]["fast"]["since_start"]["n"] == 1
    assert labelled["cache"]["exact"]["since_start"] == {
        "n": 1, "correct": 0, "accuracy": 0.0, "lower": 0.0, "upper": pytest.approx(0.975)
    }  # fmt: skip
    assert labelled["unknown"] == 1
    rows = [json.loads(x) for x in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert [(r["input"], r["label"], r["source"]) for r in rows] == [
        ("good film", "positive", "feedback"), ("good film", "negative", "feedback")
    ]  # fmt: skip


def test_feedback_memory_is_bounded(tmp_path: Path) -> None:
    service = _service(tmp_path, fast=ScriptedModel(_positive), accurate=ScriptedModel(_positive),
                       rate=0.0)  # fmt: skip

    async def run() -> None:
        for i in range(120):
            await service.predict(f"text {i}", request_id=f"r{i}")
        with pytest.raises(NotFoundError):
            await service.feedback("r0", "positive")
        assert (await service.feedback("r119", "positive"))["correct"]

    asyncio.run(run())
    assert service.monitor is not None and len(service.monitor.feedback) == 50


def test_remembered_answers_are_not_walked_by_the_collector() -> None:
    # Each answer is kept for up to max_items requests; as tracked objects they were most of
    # what every middle-generation collection walked under load; as tuples they piled up in
    # the young generation (free-listed tuples do not count towards threshold0). As bytes
    # the collector never sees them: not after a collection, and not before one either.
    store = FeedbackStore(max_items=5_000, ttl_s=60.0, clock=lambda: 10.0)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(5_000):
        store.record(
            f"r{i}", (f"text {i}", "positive", "fast", None, np.float64(0.9 + i * 1e-6), "v1", 10.0)
        )
    assert len(gc.get_objects()) - before < 100  # 5,000 answers held, ~0 tracked objects
    answer = asyncio.run(store.find("r4999"))
    assert answer == Answer("text 4999", "positive", "fast", None, 0.9 + 4999e-6, "v1", 10.0)
    assert asyncio.run(store.find("nope")) is None


def test_accuracy_alarm_and_auto_tightening(tmp_path: Path) -> None:
    # The fast tier's confidence is 0.82-0.99 by text; the last tier disagrees with every
    # answer under 0.9: accepting at 0.8 is wrong half the time.
    def p_fast(text: str) -> float:
        return 0.82 + 0.17 * (int(text.split()[-1]) % 10) / 9

    def p_last(text: str) -> float:
        return 0.95 if p_fast(text) >= 0.9 else 0.05

    service = _service(tmp_path, fast=ScriptedModel(p_fast), accurate=ScriptedModel(p_last),
                       tighten=True)  # fmt: skip
    monitor = service.monitor
    assert monitor is not None
    clock = ManualClock(1e6)
    monitor._clock = clock  # judge every verdict, not every 0.2 s
    monitor.shadow._clock = clock
    ns_before = service.caches.exact.namespace if service.caches.exact else None

    async def run() -> None:
        for i in range(300):
            clock.advance(1.0)
            await service.predict(f"review {i}", request_id=f"q{i}")
            await monitor.shadow.drain()

    asyncio.run(run())
    changes = list(monitor.changes)
    assert changes and all(c["reason"] == "drift" for c in changes)
    assert changes[0]["from"] == 0.8 and changes[-1]["to"] >= 0.9
    assert service.tiers[0].threshold == changes[-1]["to"]
    assert service.caches.exact is not None and service.caches.exact.namespace != ns_before
    text = service.metrics_text().decode()
    assert metric_total(text, "tiergate_threshold_changes_total", tier="fast",
                        reason="drift") == len(changes)  # fmt: skip
    assert metric_total(text, "tiergate_threshold", tier="fast") == changes[-1]["to"]
    # At 0.9 and above every accepted answer agrees: the alarm has cleared, no more moves.
    assert monitor.judges["fast"].state != "alarm"
    assert monitor.describe()["drift"]["alarms"] == []


def _artifact(path: Path, threshold: float, version: str) -> None:
    path.write_text(json.dumps({
        "format": FORMAT, "version": version, "service": "watched", "method": "test",
        "thresholds": {"fast": threshold}, "temperatures": {"fast": 1.0, "accurate": 1.0},
        "model_versions": {"fast": "scripted-1", "accurate": "scripted-1"},
        "target_accuracy": 0.9, "confidence": 0.95,
    }))  # fmt: skip


def test_reload_switches_calibration_and_cache_namespace_at_once(tmp_path: Path) -> None:
    _artifact(tmp_path / "calibration.json", 0.8, "cal-old")
    service = _service(tmp_path, fast=ScriptedModel(lambda t: 0.85),
                       accurate=ScriptedModel(_negative), rate=0.0, threshold="null",
                       extra="calibration: calibration.json")  # fmt: skip

    async def ask() -> Any:
        return await service.predict("same text", request_id="x")

    first = asyncio.run(ask())
    assert (first.tier, first.calibration_version) == ("fast", "cal-old")
    _artifact(tmp_path / "calibration.json", 0.9, "cal-new")
    out = service.reload()
    assert out["previous_thresholds"]["fast"] == 0.8 and out["thresholds"]["fast"] == 0.9
    again = asyncio.run(ask())  # not the cached answer of the old calibration
    assert (again.tier, again.cache, again.calibration_version) == ("accurate", None, "cal-new")
    assert service.monitor is not None
    assert [c["reason"] for c in service.monitor.changes] == ["reload"]
    # A broken artifact is refused and the running calibration stays.
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(ConfigError):
        service.reload()
    assert service.cascade.calibration_version == "cal-new"
    _artifact(tmp_path / "calibration.json", 0.7, "cal-other-model")
    body = json.loads((tmp_path / "calibration.json").read_text())
    body["model_versions"]["fast"] = "another"
    (tmp_path / "calibration.json").write_text(json.dumps(body))
    with pytest.raises(ConfigError, match="model version"):
        service.reload()
    assert service.tiers[0].threshold == 0.9
