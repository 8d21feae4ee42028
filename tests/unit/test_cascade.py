"""Cascade policy with scripted tiers and an injected clock (no real time)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tiergate.cascade import Cascade, FallbackPolicy
from tiergate.errors import ModelError
from tiergate.metrics import Metrics
from tiergate.testing import ManualClock, ScriptedModel
from tiergate.tier import Tier


def p_fast(text: str) -> float:
    # Confident on "great"/"awful", unsure otherwise.
    if "great" in text:
        return 0.97
    if "awful" in text:
        return 0.02
    return 0.55


def p_accurate(text: str) -> float:
    return 0.1 if "not" in text else 0.9


async def no_sleep(seconds: float) -> None:
    SLEPT.append(seconds)


SLEPT: list[float] = []


def make(clock: ManualClock, *, fast: ScriptedModel | None = None, acc=None, **kw) -> Cascade:
    fast_tier = Tier(
        "fast", fast or ScriptedModel(p_fast, version="f1"), threshold=0.9,
        cost_per_call=1.0, clock=clock,
    )  # fmt: skip
    acc_tier = Tier(
        "accurate", acc or ScriptedModel(p_accurate, version="a1"), threshold=None,
        cost_per_call=10.0, clock=clock,
    )  # fmt: skip
    return Cascade(
        [fast_tier, acc_tier],
        calibration_version="cal-x",
        clock=clock,
        metrics=Metrics("t", ["fast", "accurate"]),
        sleep=no_sleep,
        **kw,
    )


async def test_confident_inputs_stay_on_fast_tier() -> None:
    clock = ManualClock()
    (r,) = await make(clock).run(["a great film"], deadline=1.0)
    assert (r.output, r.tier, r.path, r.cost, r.degraded) == (
        "positive", "fast", ("fast",), 1.0, None,
    )  # fmt: skip
    assert r.confidence == pytest.approx(0.97)
    assert r.model_version == "f1" and r.calibration_version == "cal-x"


async def test_uncertain_inputs_escalate_and_pay_both_tiers() -> None:
    clock = ManualClock()
    (r,) = await make(clock).run(["it is not bad"], deadline=1.0)
    assert r.path == ("fast", "accurate")
    assert (r.tier, r.output, r.cost) == ("accurate", "negative", 11.0)
    assert r.degraded is None


async def test_batch_calls_each_tier_once_with_only_pending_inputs() -> None:
    clock = ManualClock()
    fast = ScriptedModel(p_fast)
    acc = ScriptedModel(p_accurate)
    results = await make(clock, fast=fast, acc=acc).run(
        ["great", "awful", "meh", "not meh"], deadline=1.0
    )
    assert fast.calls == [4] and acc.calls == [2]
    assert [r.tier for r in results] == ["fast", "fast", "accurate", "accurate"]
    assert [r.output for r in results] == ["positive", "negative", "positive", "negative"]


async def test_threshold_is_inclusive() -> None:
    clock = ManualClock()
    c = make(clock, fast=ScriptedModel(lambda t: 0.9))
    (r,) = await c.run(["x"], deadline=1.0)
    assert r.tier == "fast"


async def test_failing_fast_tier_falls_through_to_next_tier_with_reason() -> None:
    def boom(_: Sequence[str]) -> None:
        raise RuntimeError("weights corrupted")

    clock = ManualClock()
    (r,) = await make(clock, fast=ScriptedModel(p_fast, on_call=boom)).run(["great"], 1.0)
    assert r.tier == "accurate" and r.path == ("fast", "accurate")
    assert r.degraded == "tier_error:fast"


async def test_failing_accurate_tier_degrades_to_best_so_far() -> None:
    def boom(_: Sequence[str]) -> None:
        raise ModelError("down")

    clock = ManualClock()
    (r,) = await make(clock, acc=ScriptedModel(p_accurate, on_call=boom)).run(["meh"], 1.0)
    assert (r.tier, r.output, r.degraded) == ("fast", "positive", "tier_error:accurate")
    assert r.confidence == pytest.approx(0.55)


async def test_garbage_output_is_a_tier_error_not_an_answer() -> None:
    class Garbage(ScriptedModel):
        def predict_batch(self, texts):  # type: ignore[no-untyped-def]
            return [[float("nan"), 0.5] for _ in texts]

    clock = ManualClock()
    (r,) = await make(clock, acc=Garbage(p_accurate)).run(["meh"], 1.0)
    assert r.degraded == "tier_error:accurate" and r.tier == "fast"


async def test_all_tiers_failing_uses_default_output_or_reports_failure() -> None:
    def boom(_: Sequence[str]) -> None:
        raise RuntimeError("x")

    clock = ManualClock()
    kw = {"fast": ScriptedModel(p_fast, on_call=boom), "acc": ScriptedModel(p_fast, on_call=boom)}
    (r,) = await make(clock, **kw).run(["great"], 1.0)
    assert r.output is None and r.degraded == "tier_error:accurate"
    assert r.extra == {"failed": True}
    c = make(clock, fallback=FallbackPolicy(default_output="neutral"), **kw)
    (r,) = await c.run(["great"], 1.0)
    assert (r.output, r.tier, r.degraded) == ("neutral", None, "tier_error:accurate")


async def test_tier_whose_expected_latency_exceeds_budget_is_skipped() -> None:
    clock = ManualClock()

    def slow(_: Sequence[str]) -> None:
        clock.advance(0.3)  # the accurate tier takes 300 ms

    c = make(clock, acc=ScriptedModel(p_accurate, on_call=slow))
    (r,) = await c.run(["meh"], deadline=clock() + 1.0)
    assert r.tier == "accurate" and r.degraded is None
    # Now the tier is known to take ~300 ms; with 100 ms left it is not attempted.
    (r,) = await c.run(["meh"], deadline=clock() + 0.1)
    assert (r.tier, r.path, r.degraded) == ("fast", ("fast",), "deadline")
    assert r.cost == 1.0


async def test_expired_deadline_with_no_answer_reports_failure() -> None:
    clock = ManualClock()
    (r,) = await make(clock).run(["great"], deadline=clock() - 0.001)
    assert r.output is None and r.degraded == "deadline" and r.path == ()


async def test_latency_is_measured_on_injected_clock() -> None:
    clock = ManualClock()

    def tick(_: Sequence[str]) -> None:
        clock.advance(0.002)

    c = make(clock, fast=ScriptedModel(p_fast, on_call=tick))
    (r,) = await c.run(["great"], deadline=1.0, start=clock())
    assert r.latency_ms == pytest.approx(2.0)


def test_non_final_tier_needs_threshold() -> None:
    clock = ManualClock()
    t1 = Tier("a", ScriptedModel(p_fast), threshold=None, clock=clock)
    t2 = Tier("b", ScriptedModel(p_fast), threshold=None, clock=clock)
    with pytest.raises(ValueError, match="no threshold"):
        Cascade([t1, t2], calibration_version=None)


async def test_metrics_count_escalations_and_cost() -> None:
    clock = ManualClock()
    c = make(clock)
    await c.run(["great", "meh", "not meh"], deadline=1.0)
    text = c.metrics.render().decode() if c.metrics else ""
    assert 'tiergate_escalations_total{from_tier="fast",to_tier="accurate"} 2.0' in text
    assert 'tiergate_cost_total{tier="accurate"} 20.0' in text
    assert 'tiergate_tier_calls_total{outcome="accepted",tier="fast"} 1.0' in text


async def test_transient_error_is_retried_within_budget() -> None:
    clock = ManualClock()
    failures = [RuntimeError("flaky")]

    def flaky(_: Sequence[str]) -> None:
        if failures:
            raise failures.pop()

    c = make(clock, acc=ScriptedModel(p_accurate, on_call=flaky))
    (r,) = await c.run(["meh"], 1.0)
    assert (r.tier, r.degraded) == ("accurate", None)
    assert c.tiers[1].retry_budget.retries == 1


async def test_retry_budget_caps_retries_during_an_outage() -> None:
    clock = ManualClock()

    def down(_: Sequence[str]) -> None:
        raise RuntimeError("down")

    c = make(clock, acc=ScriptedModel(p_accurate, on_call=down))
    acc = c.tiers[1]
    acc.breaker.policy = type(acc.breaker.policy)(min_calls=10_000)  # keep it closed here
    for _ in range(500):
        (r,) = await c.run(["meh"], 1.0)
        assert r.degraded == "tier_error:accurate" and r.tier == "fast"
    budget = acc.retry_budget
    assert budget.attempts == 500
    assert budget.retries <= budget.ratio * budget.attempts + budget.max_tokens


async def test_open_breaker_skips_tier_then_probes_and_recovers() -> None:
    clock = ManualClock()
    healthy = [False]

    def maybe(_: Sequence[str]) -> None:
        if not healthy[0]:
            raise RuntimeError("down")

    c = make(clock, acc=ScriptedModel(p_accurate, on_call=maybe))
    acc = c.tiers[1]
    for _ in range(10):
        await c.run(["meh"], clock() + 1.0)
    assert acc.breaker.state == "open"
    calls_before = len(acc.adapter.calls)  # type: ignore[attr-defined]
    (r,) = await c.run(["meh"], clock() + 1.0)
    assert r.degraded == "circuit_open:accurate" and r.path == ("fast",)
    assert len(acc.adapter.calls) == calls_before  # type: ignore[attr-defined]
    healthy[0] = True
    clock.advance(acc.breaker.policy.cooldown_s)
    for _ in range(acc.breaker.policy.probes):
        (r,) = await c.run(["meh"], clock() + 1.0)
        assert r.tier == "accurate" and r.degraded is None
    assert acc.breaker.state == "closed"
