"""Prometheus metrics (names prefixed ``tiergate_``) and cost accounting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from tiergate.config import multiprocess_metrics_dir
from tiergate.types import Result

__all__ = ["BoundLabels", "Metrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip

_GC_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class BoundLabels:
    """A labelled metric's children, each created once.

    ``metric.labels(*values)`` takes a lock and validates on every call; the request
    path instead looks its children up here (label values come from small fixed sets:
    tiers, outcomes, reasons).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """All of a service's metrics, in a registry of its own (tests can make many)."""

    def __init__(self, service: str, tiers: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tiergate_requests",
            "Inputs answered, by the tier that answered and outcome (ok/degraded/failed/cached).",
            ["tier", "outcome"],
            registry=r,
        )
        self.tier_calls = Counter(
            "tiergate_tier_calls",
            "Inputs a tier saw, by outcome (accepted/escalated/error/timeout/skipped).",
            ["tier", "outcome"],
            registry=r,
        )
        self.escalations = Counter(
            "tiergate_escalations",
            "Inputs escalated from one tier to the next.",
            ["from_tier", "to_tier"],
            registry=r,
        )
        self.tier_latency = Histogram(
            "tiergate_tier_latency_seconds",
            "Latency of one tier call (a batch), seconds.",
            ["tier"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_latency = Histogram(
            "tiergate_request_latency_seconds",
            "End-to-end latency of one input, seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cost = Counter(
            "tiergate_cost", "Accumulated model cost, currency units.", ["tier"], registry=r
        )
        self.cost_per_call = Gauge(
            "tiergate_tier_cost_per_call", "Cost of one call of a tier.", ["tier"], registry=r,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.degraded = Counter(
            "tiergate_degraded", "Answers that are not the policy's, by reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "tiergate_rejected_requests",
            "Requests refused before any model ran, by error type.",
            ["type"],
            registry=r,
        )
        self.cache = Counter(
            "tiergate_cache_lookups", "Cache lookups by kind and result.", ["kind", "result"],
            registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "tiergate_retries", "Retried tier calls (bounded by the retry budget).", ["tier"],
            registry=r,
        )  # fmt: skip
        self.breaker_state = Gauge(
            "tiergate_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["tier"], registry=r, multiprocess_mode="livemax",  # the worst worker's breaker
        )  # fmt: skip
        self.breaker_transitions = Counter(
            "tiergate_breaker_transitions", "Circuit breaker state changes.", ["tier", "to"],
            registry=r,
        )  # fmt: skip
        self.shed = Counter(
            "tiergate_shed", "Requests refused by admission control (429).", registry=r
        )
        self.inflight = Gauge(
            "tiergate_inflight", "Inputs in flight.", registry=r, multiprocess_mode="livesum"
        )
        self.ready = Gauge(  # 1 only if every live worker is
            "tiergate_ready", "1 when models are loaded.", registry=r, multiprocess_mode="livemin"
        )
        self.info = Gauge(
            "tiergate_info",
            "Service, tier model versions and calibration version (value always 1).",
            ["service", "tier", "model_version", "calibration_version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.gc_pause = Histogram(
            "tiergate_gc_pause_seconds",
            "Garbage-collector pauses of the serving process, by generation, wall seconds.",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=r,
        )
        self.gc_cpu = Histogram(
            "tiergate_gc_cpu_seconds",
            "CPU time the collecting thread spent in each garbage collection, by generation "
            "(the collector's own work; a wall pause far above it was the scheduler).",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tiergate_batch_size",
            "Inputs per model call of a tier (micro-batches and batch requests).",
            ["tier"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tiergate_tokens",
            "Tokens a metered (LLM) tier's upstream reported, by kind (prompt/completion).",
            ["tier", "kind"],
            registry=r,
        )
        self.key_requests = Counter(
            "tiergate_key_requests",
            "Requests admitted per API key (by key name; never the key).",
            ["key"],
            registry=r,
        )
        self.auth_rejected = Counter(
            "tiergate_auth_rejected",
            "Requests refused by API-key checks, by reason (unauthorized, forbidden, "
            "rate_limited).",
            ["reason"],
            registry=r,
        )
        self.key_spend = Counter(
            "tiergate_key_spend",
            "Cost settled against each API key's budget (by key name).",
            ["key"],
            registry=r,
        )
        self.key_budget_remaining = Gauge(
            "tiergate_key_budget_remaining",
            "What each key's budget has left this period, as this process last saw it.",
            ["key"],
            registry=r,
        )
        self.shared_state_fallback = Counter(
            "tiergate_shared_state_fallback",
            "Decisions taken on per-process state because Redis was unreachable.",
            ["what"],
            registry=r,
        )
        # Watching production (tiergate.monitor); estimates are point-in-time gauges.
        per_worker = {"registry": r, "multiprocess_mode": "livemin"}  # the worst worker
        self.shadow_accuracy = Gauge(
            "tiergate_shadow_accuracy",
            "Accuracy of a tier's accepted answers estimated from shadow re-answers by the "
            "last tier (window: sliding window; start: since start).",
            ["tier", "window"], **per_worker,  # type: ignore[arg-type]
        )  # fmt: skip
        self.shadow_accuracy_lower = Gauge(
            "tiergate_shadow_accuracy_lower",
            "Lower end of the shadow accuracy estimate's interval.",
            ["tier", "window"], **per_worker,  # type: ignore[arg-type]
        )  # fmt: skip
        self.shadow_agreement = Gauge(
            "tiergate_shadow_agreement",
            "Share of a tier's shadowed accepted answers the last tier agrees with (what the "
            "accuracy alarm judges on shadow evidence).",
            ["tier", "window"], **per_worker,  # type: ignore[arg-type]
        )  # fmt: skip
        self.shadow_agreement_lower = Gauge(
            "tiergate_shadow_agreement_lower",
            "Lower end of the shadow agreement's interval.",
            ["tier", "window"], **per_worker,  # type: ignore[arg-type]
        )  # fmt: skip
        self.shadow_samples = Counter(
            "tiergate_shadow_samples", "Accepted answers re-answered by the last tier.",
            ["tier"], registry=r,
        )  # fmt: skip
        self.shadow_cost = Counter(
            "tiergate_shadow_cost", "Cost of shadow re-answers, currency units.", registry=r
        )
        self.labelled_accuracy = Gauge(
            "tiergate_labelled_accuracy",
            "Accuracy of a tier's served answers on labels sent to /v1/feedback.",
            ["tier", "window"], **per_worker,  # type: ignore[arg-type]
        )  # fmt: skip
        self.labelled_accuracy_lower = Gauge(
            "tiergate_labelled_accuracy_lower",
            "Lower end of the labelled accuracy's interval.",
            ["tier", "window"], **per_worker,  # type: ignore[arg-type]
        )  # fmt: skip
        self.feedback = Counter(
            "tiergate_feedback", "Labels received, by result (correct/wrong/unknown).",
            ["result"], registry=r,
        )  # fmt: skip
        self.drift_alarm = Gauge(
            "tiergate_drift_alarm", "1 while a drift alarm is raised, by tier and kind "
            "(accuracy/input).", ["tier", "kind"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.input_drift_pvalue = Gauge(
            "tiergate_input_drift_pvalue",
            "p-value of the last input-drift test (live confidences vs calibration split).",
            ["tier"], **per_worker,  # type: ignore[arg-type]
        )  # fmt: skip
        self.threshold = Gauge(
            "tiergate_threshold", "Confidence threshold a tier accepts at, now.", ["tier"],
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.threshold_changes = Counter(
            "tiergate_threshold_changes", "Threshold changes, by tier and reason "
            "(drift/reload).", ["tier", "reason"], registry=r,
        )  # fmt: skip
        self.accuracy_target = Gauge(
            "tiergate_accuracy_target", "The calibrated accuracy target.", registry=r,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.shadow_samples_by = BoundLabels(self.shadow_samples)
        self.shadow_accuracy_by = BoundLabels(self.shadow_accuracy)
        self.shadow_agreement_by = BoundLabels(self.shadow_agreement)
        self.shadow_agreement_lower_by = BoundLabels(self.shadow_agreement_lower)
        self.shadow_accuracy_lower_by = BoundLabels(self.shadow_accuracy_lower)
        self.labelled_accuracy_by = BoundLabels(self.labelled_accuracy)
        self.labelled_accuracy_lower_by = BoundLabels(self.labelled_accuracy_lower)
        self.feedback_by = BoundLabels(self.feedback)
        self.drift_alarm_by = BoundLabels(self.drift_alarm)
        self.input_drift_pvalue_by = BoundLabels(self.input_drift_pvalue)
        self.threshold_by = BoundLabels(self.threshold)
        self.threshold_changes_by = BoundLabels(self.threshold_changes)
        self._service = service
        self.key_requests_by = BoundLabels(self.key_requests)
        self.auth_rejected_by = BoundLabels(self.auth_rejected)
        self.shared_state_fallback_by = BoundLabels(self.shared_state_fallback)
        self.key_spend_by = BoundLabels(self.key_spend)
        self.key_budget_remaining_by = BoundLabels(self.key_budget_remaining)
        self.tokens_by = BoundLabels(self.tokens)
        # Children bound once: the request path never calls ``labels()``.
        self.requests_by = BoundLabels(self.requests)
        self.tier_calls_by = BoundLabels(self.tier_calls)
        self.escalations_by = BoundLabels(self.escalations)
        self.tier_latency_by = BoundLabels(self.tier_latency)
        self.cost_by = BoundLabels(self.cost)
        self.degraded_by = BoundLabels(self.degraded)
        self.rejected_by = BoundLabels(self.rejected)
        self.retries_by = BoundLabels(self.retries)
        self.batch_size_by = BoundLabels(self.batch_size)
        self._gc_by = BoundLabels(self.gc_pause)
        self._gc_cpu_by = BoundLabels(self.gc_cpu)
        self._request_latency = self.request_latency
        for t in tiers:
            for outcome in ("ok", "degraded", "failed", "cached"):
                self.requests_by(t, outcome)
            self.cost_by(t)
        for g in ("0", "1", "2"):
            self._gc_by(g)
            self._gc_cpu_by(g)

    def observe_gc_pause(self, generation: int, seconds: float, cpu_seconds: float) -> None:
        """A :class:`tiergate.heap.PauseSink`: ``tiergate_gc_pause_seconds`` and ``_cpu_``."""
        g = str(generation)
        self._gc_by(g).observe(seconds)
        self._gc_cpu_by(g).observe(cpu_seconds)

    def observe_result(self, result: Result) -> None:
        """Count one answered input (not cache lookups: those count in ``cache``)."""
        outcome = (
            "failed" if result.output is None
            else "degraded" if result.degraded
            else "cached" if result.cache
            else "ok"
        )  # fmt: skip
        self.requests_by(result.tier or "none", outcome).inc()
        self._request_latency.observe(result.latency_ms / 1000.0)
        if result.degraded:
            self.degraded_by(result.degraded).inc()

    def render(self) -> bytes:
        """Prometheus text exposition format.

        Under ``serve --workers N`` (a multiprocess metrics folder is set, see
        :mod:`tiergate.workers`) the numbers are those of all workers merged, whichever
        worker answers the scrape; else this process's registry.
        """
        shared = multiprocess_metrics_dir()
        if shared is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(shared))  # type: ignore[no-untyped-call]
        return generate_latest(merged)
