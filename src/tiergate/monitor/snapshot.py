"""The dashboard's data: one JSON-ready snapshot of a service's counters and state.

:func:`snapshot` reads the service's Prometheus registry (``registry.collect()``, the
same numbers ``/metrics`` shows), :meth:`Service.describe` and the monitor's state.
Counters are cumulative: the page (``GET /dashboard``) turns two snapshots into rates,
and two latency histograms into quantiles of the requests between them. It is called
about once a second by each open page, never on the request path.

>>> snapshot(service)["tiers"][0]["requests"]  # doctest: +SKIP
{'ok': 12.0, 'degraded': 0.0, 'failed': 0.0, 'cached': 3.0}
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, multiprocess

from tiergate.config import multiprocess_metrics_dir

if TYPE_CHECKING:
    from tiergate.service import Service

__all__ = ["snapshot"]

_OUTCOMES = ("ok", "degraded", "failed", "cached")
_CALL_OUTCOMES = ("accepted", "escalated", "error", "timeout", "skipped")
_NO_TIER = "none"  # the ``tier`` label of answers no tier gave

# sample name (``tiergate_requests_total``, ``..._bucket``) -> [(labels, value)]
_Samples = dict[str, list[tuple[dict[str, str], float]]]


def snapshot(service: Service) -> dict[str, Any]:
    """Cumulative counters, latency histogram, tiers, breakers, SLO and monitor state.

    Under ``serve --workers N`` the counters are all workers' merged (as ``/metrics``);
    tier state and the monitor are those of the worker that answers.
    """
    samples = _collect(_registry(service))
    described = service.describe()
    tiers_described: list[dict[str, Any]] = list(described.get("tiers", []))
    names = [str(t["name"]) for t in tiers_described]

    requests = _by(samples, "tiergate_requests_total", "tier", "outcome")
    calls = _by(samples, "tiergate_tier_calls_total", "tier", "outcome")
    cost = _sum_by(samples, "tiergate_cost_total", "tier")
    tiers = []
    for t in tiers_described:
        name = str(t["name"])
        tiers.append(
            {
                "name": name,
                "model_version": t.get("model_version"),
                "threshold": t.get("threshold"),
                "cost_per_call": t.get("cost_per_call"),
                "breaker": t.get("breaker"),
                "requests": _outcomes(requests.get(name, {}), _OUTCOMES),
                "calls": _outcomes(calls.get(name, {}), _CALL_OUTCOMES),
                "cost": cost.get(name, 0.0),
            }
        )
    # Answers that no tier gave (tier="none": failed, shed) and any tier not in the
    # config any more still count in the totals.
    others = {t: _outcomes(v, _OUTCOMES) for t, v in requests.items() if t not in names}
    totals = {o: sum(row.get(o, 0.0) for row in requests.values()) for o in _OUTCOMES}

    monitor = described.get("monitor")
    if monitor is None:
        live = getattr(service, "monitor", None)
        monitor = live.describe() if live is not None else None
    if isinstance(monitor, dict) and not monitor.get("enabled", True):
        monitor = None

    return {
        "t": time.monotonic(),
        "service": service.config.service,
        "calibration_version": described.get("calibration_version"),
        "slo": service.config.slo.model_dump(),
        "ready": not service.draining,
        "draining": service.draining,
        "inflight": service.admission.inflight,
        "requests": {"total": sum(totals.values()), **totals},
        "tiers": tiers,
        "other_tiers": others,
        "escalations": [
            {"from": k[0], "to": k[1], "n": v}
            for k, v in _pairs(samples, "tiergate_escalations_total", "from_tier", "to_tier")
        ],
        "cache": _by(samples, "tiergate_cache_lookups_total", "kind", "result"),
        "degraded": _sum_by(samples, "tiergate_degraded_total", "reason"),
        "rejected": _sum_by(samples, "tiergate_rejected_requests_total", "type"),
        "shed": _total(samples, "tiergate_shed_total"),
        "latency": _histogram(samples, "tiergate_request_latency_seconds"),
        "monitor": monitor,
    }


def _registry(service: Service) -> CollectorRegistry:
    shared = multiprocess_metrics_dir()
    if shared is None:
        return service.metrics.registry
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, path=str(shared))  # type: ignore[no-untyped-call]
    return merged


def _collect(registry: CollectorRegistry) -> _Samples:
    out: _Samples = {}
    for family in registry.collect():
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def _pairs(samples: _Samples, name: str, *labels: str) -> Iterable[tuple[tuple[str, ...], float]]:
    merged: dict[tuple[str, ...], float] = {}
    for lab, value in samples.get(name, ()):
        key = tuple(lab.get(k, "") for k in labels)
        merged[key] = merged.get(key, 0.0) + value
    return merged.items()


def _by(samples: _Samples, name: str, outer: str, inner: str) -> dict[str, dict[str, float]]:
    """``{outer label value: {inner label value: value}}``."""
    nested: dict[str, dict[str, float]] = {}
    for (a, b), value in _pairs(samples, name, outer, inner):
        nested.setdefault(a, {})[b] = value
    return nested


def _sum_by(samples: _Samples, name: str, label: str) -> dict[str, float]:
    return {k[0]: v for k, v in _pairs(samples, name, label)}


def _outcomes(row: dict[str, float], known: tuple[str, ...]) -> dict[str, float]:
    # Known outcomes always present (zero until seen); unknown ones kept as they come.
    return {**dict.fromkeys(known, 0.0), **row}


def _total(samples: _Samples, name: str) -> float:
    return sum(v for _, v in samples.get(name, ()))


def _histogram(samples: _Samples, name: str) -> dict[str, Any]:
    """Cumulative bucket counts, upper bounds ascending, ``+Inf`` as ``count``."""
    buckets: dict[float, float] = {}
    for lab, value in samples.get(name + "_bucket", ()):
        le = float(lab["le"])
        buckets[le] = buckets.get(le, 0.0) + value
    finite = sorted(le for le in buckets if not math.isinf(le))
    count = _total(samples, name + "_count")
    return {
        "le": finite,
        "counts": [buckets[le] for le in finite],
        "count": count,
        "sum": _total(samples, name + "_sum"),
    }
