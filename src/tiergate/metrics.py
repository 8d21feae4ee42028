"""Prometheus metrics (names prefixed ``tiergate_``) and cost accounting."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from tiergate.types import Result

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


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
            "tiergate_tier_cost_per_call", "Cost of one call of a tier.", ["tier"], registry=r
        )
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
            ["tier"], registry=r,
        )  # fmt: skip
        self.breaker_transitions = Counter(
            "tiergate_breaker_transitions", "Circuit breaker state changes.", ["tier", "to"],
            registry=r,
        )  # fmt: skip
        self.shed = Counter(
            "tiergate_shed", "Requests refused by admission control (429).", registry=r
        )
        self.inflight = Gauge("tiergate_inflight", "Inputs in flight.", registry=r)
        self.ready = Gauge("tiergate_ready", "1 when models are loaded.", registry=r)
        self.info = Gauge(
            "tiergate_info",
            "Service, tier model versions and calibration version (value always 1).",
            ["service", "tier", "model_version", "calibration_version"],
            registry=r,
        )
        self._service = service
        for t in tiers:
            for outcome in ("ok", "degraded", "failed", "cached"):
                self.requests.labels(t, outcome)
            self.cost.labels(t)

    def observe_result(self, result: Result) -> None:
        """Count one answered input (not cache lookups: those count in ``cache``)."""
        outcome = (
            "failed" if result.output is None
            else "degraded" if result.degraded
            else "cached" if result.cache
            else "ok"
        )  # fmt: skip
        self.requests.labels(result.tier or "none", outcome).inc()
        self.request_latency.observe(result.latency_ms / 1000.0)
        if result.degraded:
            self.degraded.labels(result.degraded).inc()

    def render(self) -> bytes:
        """Prometheus text exposition format."""
        return generate_latest(self.registry)
