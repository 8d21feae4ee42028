"""Cache metrics behind a small hook protocol, with a Prometheus implementation.

The caches and stores call a :class:`CacheMetrics`; the service decides where the
numbers go. :class:`PrometheusCacheMetrics` registers ``tiergate_cache_*`` metrics in a
``prometheus_client`` registry; :class:`NullCacheMetrics` drops everything (the default).
Hit rates are ratios of ``tiergate_cache_lookups_total{kind, result}``.
"""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tiergate.metrics import BoundLabels

__all__ = ["CacheMetrics", "NullCacheMetrics", "PrometheusCacheMetrics"]

_LOOKUP_BUCKETS = (
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip


class CacheMetrics(Protocol):
    """Hooks the caches call. ``kind`` is ``exact`` or ``semantic``; ``store`` a backend name.

    ``lookup`` results: ``hit``, ``miss``, ``coalesced`` (waited on an identical
    in-flight request), ``error`` (an undecodable entry, treated as a miss).
    """

    def lookup(self, kind: str, result: str, seconds: float) -> None: ...

    def stored(self, kind: str, stored: bool) -> None: ...

    def eviction(self, store: str, count: int) -> None: ...

    def store_error(self, store: str, op: str) -> None: ...

    def store_bypass(self, store: str, op: str) -> None: ...

    def store_up(self, store: str, up: bool) -> None: ...

    def audit(self, false_hit: bool, false_hit_rate: float, upper_bound: float) -> None: ...

    def threshold(self, value: float) -> None: ...

    def entries(self, kind: str, count: int) -> None: ...


class NullCacheMetrics:
    """Drops every observation."""

    def lookup(self, kind: str, result: str, seconds: float) -> None:
        pass

    def stored(self, kind: str, stored: bool) -> None:
        pass

    def eviction(self, store: str, count: int) -> None:
        pass

    def store_error(self, store: str, op: str) -> None:
        pass

    def store_bypass(self, store: str, op: str) -> None:
        pass

    def store_up(self, store: str, up: bool) -> None:
        pass

    def audit(self, false_hit: bool, false_hit_rate: float, upper_bound: float) -> None:
        pass

    def threshold(self, value: float) -> None:
        pass

    def entries(self, kind: str, count: int) -> None:
        pass


class PrometheusCacheMetrics:
    """``tiergate_cache_*`` metrics in ``registry``.

    Pass ``lookups`` to reuse an existing ``Counter`` labelled ``(kind, result)``
    (e.g. the service's ``tiergate_cache_lookups``) instead of registering a new one.
    """

    def __init__(self, registry: CollectorRegistry, *, lookups: Any | None = None) -> None:
        r = registry
        self.lookups: Any = lookups or Counter(
            "tiergate_cache_lookups", "Cache lookups by kind and result.", ["kind", "result"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "tiergate_cache_lookup_latency_seconds",
            "Latency of one cache lookup (store round trip or embedding + search), seconds.",
            ["kind"],
            buckets=_LOOKUP_BUCKETS,
            registry=r,
        )
        self.stores = Counter(
            "tiergate_cache_stores", "Answers offered to a cache, by whether they were stored.",
            ["kind", "stored"], registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "tiergate_cache_evictions", "Entries evicted for capacity.", ["store"], registry=r
        )
        self.errors = Counter(
            "tiergate_cache_store_errors",
            "Cache store operations that failed (e.g. Redis unreachable).",
            ["store", "op"],
            registry=r,
        )
        self.bypass = Counter(
            "tiergate_cache_store_bypassed",
            "Store operations skipped while the store is unavailable (served without cache).",
            ["store", "op"],
            registry=r,
        )
        self.up = Gauge(  # multiprocess: 0 if any live worker cannot reach it
            "tiergate_cache_store_up", "1 when the store is reachable.", ["store"], registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.audits = Counter(
            "tiergate_cache_semantic_audits",
            "Semantic hits re-checked against the cascade, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.false_hit_rate = Gauge(
            "tiergate_cache_semantic_false_hit_rate",
            "Measured false-hit rate of audited semantic hits at the current threshold.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.false_hit_upper = Gauge(
            "tiergate_cache_semantic_false_hit_upper_bound",
            "Clopper-Pearson upper confidence bound of the semantic false-hit rate.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.threshold_gauge = Gauge(
            "tiergate_cache_semantic_threshold",
            "Current cosine-similarity threshold of the semantic cache.",
            registry=r,
            multiprocess_mode="livemin",  # each worker audits its own: show the loosest
        )
        self.entries_gauge = Gauge(
            "tiergate_cache_entries", "Entries held in process, by kind.", ["kind"], registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        # Children bound once: lookups and stores run on every request.
        self._lookups = BoundLabels(self.lookups)
        self._latency = BoundLabels(self.latency)
        self._stores = BoundLabels(self.stores)

    def lookup(self, kind: str, result: str, seconds: float) -> None:
        self._lookups(kind, result).inc()
        self._latency(kind).observe(seconds)

    def stored(self, kind: str, stored: bool) -> None:
        self._stores(kind, "yes" if stored else "no").inc()

    def eviction(self, store: str, count: int) -> None:
        self.evictions.labels(store).inc(count)

    def store_error(self, store: str, op: str) -> None:
        self.errors.labels(store, op).inc()

    def store_bypass(self, store: str, op: str) -> None:
        self.bypass.labels(store, op).inc()

    def store_up(self, store: str, up: bool) -> None:
        self.up.labels(store).set(1 if up else 0)

    def audit(self, false_hit: bool, false_hit_rate: float, upper_bound: float) -> None:
        self.audits.labels("false_hit" if false_hit else "correct").inc()
        self.false_hit_rate.set(false_hit_rate)
        self.false_hit_upper.set(upper_bound)

    def threshold(self, value: float) -> None:
        self.threshold_gauge.set(value)

    def entries(self, kind: str, count: int) -> None:
        self.entries_gauge.labels(kind).set(count)
