"""Semantic cache, vector index and the serve-time audit, with a fake embedder.

``AngleEmbedder`` is a fake: a text ``"name@θ"`` embeds to the unit vector at angle θ
(radians) in a plane, so the cosine similarity of two texts is exactly ``cos(θ1 - θ2)``.
That lets each test set similarities precisely around the threshold, which a real
model cannot; the real MiniLM is exercised in tests/integration/test_cache_minilm.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from tiergate.cache import (
    AuditPolicy,
    FalseHitMonitor,
    NumpyIndex,
    SemanticCache,
    false_hit_bounds,
)
from tiergate.errors import ConfigError
from tiergate.types import Result


class AngleEmbedder:
    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        self.calls += 1
        angles = [float(t.rsplit("@", 1)[1]) for t in texts]
        return np.array([[math.cos(a), math.sin(a)] for a in angles], dtype=np.float32)


def at(similarity: float, name: str = "q") -> str:
    """A text whose similarity to any ``"...@0"`` text is ``similarity``."""
    return f"{name}@{math.acos(similarity)}"


def answer(output: str = "positive", **kw: Any) -> Result:
    fields: dict[str, Any] = {
        "output": output, "confidence": 0.9, "tier": "fast", "path": ("fast",), "cache": None,
        "degraded": None, "latency_ms": 3.0, "cost": 1e-6, "model_version": "f1",
        "calibration_version": "cal-1", "extra": {},
    }  # fmt: skip
    fields.update(kw)
    return Result(**fields)


def make(threshold: float = 0.9, **kw: Any) -> SemanticCache:
    return SemanticCache(AngleEmbedder(), threshold, offload=False, **kw)


async def test_hits_only_at_or_above_the_threshold() -> None:
    cache = make(0.9)
    assert await cache.put("a gorgeous film@0", answer("positive"))
    assert (await cache.lookup(at(0.899))).result is None
    hit = (await cache.lookup(at(0.901))).result
    assert hit is not None and hit.cache == "semantic" and hit.output == "positive"
    assert hit.cost == 0.0 and hit.tier == "fast" and hit.path == ("fast",)
    assert hit.extra["cached_from"]["similarity"] == pytest.approx(0.901, abs=1e-4)
    assert "gorgeous" not in repr(hit.to_dict())  # never reveals the matched input


async def test_get_or_compute_stores_misses_and_serves_near_duplicates() -> None:
    cache = make(0.95)
    calls: list[str] = []

    def compute(text: str, output: str = "positive") -> Any:
        async def run() -> Result:
            calls.append(text)
            return answer(output)

        return run

    first = await cache.get_or_compute("base@0", compute("base@0"))
    assert first.cache is None
    near = await cache.get_or_compute(at(0.99), compute("near"))
    far = await cache.get_or_compute(at(0.5, "far"), compute("far", "negative"))
    assert near.cache == "semantic" and far.cache is None and far.output == "negative"
    assert calls == ["base@0", "far"]
    assert len(cache.index) == 2


@pytest.mark.parametrize(
    "result",
    [answer(degraded="deadline"), answer(cache="exact"), answer(output=None)],  # type: ignore[arg-type]
)
async def test_degraded_failed_or_cached_answers_are_not_stored(result: Result) -> None:
    cache = make()
    assert not await cache.put("x@0", result)
    assert len(cache.index) == 0


async def test_embedder_failure_is_a_miss_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def embed(self, texts: Sequence[str]) -> Any:
            raise ValueError("onnx exploded")

    cache = SemanticCache(Broken(), 0.9, offload=False)
    with caplog.at_level(logging.WARNING, "tiergate.cache"):
        found = await cache.lookup("anything")
    assert found.result is None and "onnx exploded" in caplog.text


async def test_offloaded_lookup_gives_the_same_answer() -> None:
    cache = SemanticCache(AngleEmbedder(), 0.9, offload=True)
    await cache.put("a@0", answer())
    assert (await cache.lookup(at(0.95))).result is not None


def test_numpy_index_matches_brute_force_and_grows() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = NumpyIndex[int](capacity=5000, initial_rows=8)
    index.add(vecs[:1000], list(range(1000)))
    index.add(vecs[1000:], list(range(1000, 3000)))
    queries = vecs[[5, 1500, 2999]] + 0.01
    matches = index.search(queries)
    assert [m.payload for m in matches if m] == [5, 1500, 2999]
    assert NumpyIndex[int]().search(queries) == [None, None, None]


@pytest.mark.parametrize(("eviction", "survivor"), [("fifo", None), ("lru", 0)])
def test_numpy_index_evicts_at_capacity(eviction: Any, survivor: int | None) -> None:
    index = NumpyIndex[int](capacity=3, eviction=eviction)
    eye = np.eye(4, dtype=np.float32)
    index.add(eye[:3], [0, 1, 2])
    index.touch([index.search(eye[:1])[0].slot])  # type: ignore[union-attr]
    assert index.add(eye[3:], [3]) == 1
    payloads = {m.payload for m in index.search(eye) if m}
    assert len(index) == 3 and index.evictions == 1 and 3 in payloads
    if survivor is not None:
        assert survivor in payloads and 1 not in payloads  # LRU evicted 1, not the touched 0
    else:
        assert 0 not in payloads  # FIFO evicted the oldest even though it was used


def test_bounds_are_clopper_pearson() -> None:
    assert false_hit_bounds(0, 0, 0.95) == (0.0, 1.0)
    lo, hi = false_hit_bounds(0, 299, 0.95)
    assert lo == 0.0 and hi == pytest.approx(0.00997, abs=1e-4)
    lo, hi = false_hit_bounds(10, 100, 0.95)
    assert 0.05 < lo < 0.1 < hi < 0.17


def test_policy_validation_and_required_audits() -> None:
    assert AuditPolicy(bound=0.01, confidence=0.95).required_audits == 299
    assert AuditPolicy(min_audits=50).required_audits == 50
    with pytest.raises(ConfigError):
        AuditPolicy(bound=0.0)
    with pytest.raises(ConfigError):
        AuditPolicy(rate=1.5)


def test_monitor_keeps_threshold_while_audits_certify_the_bound() -> None:
    monitor = FalseHitMonitor(AuditPolicy(bound=0.01, confidence=0.95), 0.9)
    for _ in range(400):
        assert monitor.record(0.95, False) is None
    assert monitor.threshold == 0.9 and monitor.upper_bound < 0.01


def test_monitor_weighs_a_false_hit_by_the_audits_before_it() -> None:
    # 1 false hit after 50 correct audits is no evidence against a 1 % bound...
    monitor = FalseHitMonitor(AuditPolicy(bound=0.01), 0.9)
    for _ in range(50):
        monitor.record(0.95, False)
    assert monitor.record(0.95, True) is None and monitor.threshold == 0.9
    # ...but a false hit as the very first audit is (p = 0.01 under a 1 % rate).
    first = FalseHitMonitor(AuditPolicy(bound=0.01), 0.9)
    assert first.record(0.95, True) == pytest.approx(0.91)


def test_monitor_tightens_on_clear_evidence_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    monitor = FalseHitMonitor(AuditPolicy(bound=0.01, step=0.02), 0.9)
    for _ in range(5):
        monitor.record(0.91, False)
    with caplog.at_level(logging.WARNING, "tiergate.cache"):
        tightened = [monitor.record(0.91, True) for _ in range(4)]
    # 3 false hits in 8 audits: even the anytime-valid lower bound is above 1 %.
    assert tightened == [None, None, pytest.approx(0.92), None]
    assert monitor.threshold == pytest.approx(0.92)
    assert "threshold 0.9000 -> 0.9200" in caplog.text
    assert monitor.audits == 0  # the audits at 0.91 no longer count: those hits are gone
    assert monitor.total_audits == 8  # the 4th audit was below the new threshold: ignored


def test_monitor_upper_rule_tightens_when_the_bound_is_no_longer_certified() -> None:
    policy = AuditPolicy(bound=0.05, confidence=0.9, step=0.01)
    monitor = FalseHitMonitor(policy, 0.9)
    n_min = policy.required_audits  # 45
    # 2 false hits in n_min audits: a 4.4 % rate, but its 90 % upper bound is above 5 %.
    outcomes = [False] * (n_min - 2) + [True, True]
    tightened = [monitor.record(0.97, f) for f in outcomes]
    assert tightened[:-1] == [None] * (n_min - 1)
    assert tightened[-1] == pytest.approx(0.91)
    lower_only = FalseHitMonitor(AuditPolicy(bound=0.05, confidence=0.9, trigger="lower"), 0.9)
    assert all(lower_only.record(0.97, f) is None for f in outcomes)


def test_monitor_stops_at_the_maximum_threshold() -> None:
    monitor = FalseHitMonitor(AuditPolicy(step=0.5, max_threshold=1.0), 0.9)
    for _ in range(50):
        monitor.record(1.0, True)
    assert monitor.threshold == 1.0 and monitor.tightenings == 1


async def test_audits_sample_hits_and_tighten_the_cache_threshold() -> None:
    draws = iter([0.5, 0.01, 0.01])  # a scripted "random": audit the 2nd and 3rd hit only
    policy = AuditPolicy(rate=0.05, bound=0.01, step=0.05)
    cache = make(0.9, audit=policy, random=lambda: next(draws))
    await cache.put("base@0", answer("positive"))
    asked = 0

    async def cascade() -> Result:  # the real cascade disagrees with the cached answer
        nonlocal asked
        asked += 1
        return answer("negative")

    first = await cache.get_or_compute(at(0.92), cascade)  # not audited
    await cache.drain()
    assert first.cache == "semantic" and asked == 0 and cache.threshold == 0.9
    second = await cache.get_or_compute(at(0.92), cascade)  # audited: a false hit
    assert second.cache == "semantic"
    await cache.drain()
    assert asked == 1 and cache.monitor.total_false_hits == 1
    assert cache.threshold == pytest.approx(0.95)  # a false first audit is evidence enough
    third = await cache.get_or_compute(at(0.92), cascade)
    assert third.cache is None and third.output == "negative" and asked == 2
    await cache.aclose()


async def test_record_audit_ignores_answers_that_prove_nothing() -> None:
    cache = make(0.9)
    await cache.put("base@0", answer("positive"))
    hit = (await cache.lookup(at(0.95))).result
    assert hit is not None
    assert cache.record_audit(hit, answer("negative", degraded="deadline")) is None
    assert cache.record_audit(hit, answer("positive")) is False
    assert cache.record_audit(hit, answer("negative")) is True
    assert cache.false_hit_rate == 0.5


async def test_failed_audit_is_counted_not_raised() -> None:
    cache = make(0.9, audit=AuditPolicy(rate=1.0), random=lambda: 0.0)
    await cache.put("base@0", answer())

    async def boom() -> Result:
        raise ValueError("tier down")

    hit = await cache.get_or_compute(at(0.95), boom)
    await cache.drain()
    assert hit.cache == "semantic" and cache.audit_errors == 1
