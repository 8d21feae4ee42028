"""One service for one config: guard → cascade → tiers, with metrics. No HTTP here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tiergate.artifact import CalibrationArtifact, read_artifact
from tiergate.cachelayer import CacheLayer, with_latency
from tiergate.cascade import Cascade, FallbackPolicy
from tiergate.config import ServiceConfig
from tiergate.errors import (
    ConfigError,
    DeadlineExceededError,
    DrainingError,
    InputError,
    ModelError,
    OverloadError,
)
from tiergate.guard import Guard
from tiergate.metrics import Metrics
from tiergate.models import AsyncModelAdapter, ModelAdapter, is_async, load_adapter
from tiergate.monitor import Monitor
from tiergate.resilience import Admission, Backoff, BreakerPolicy, FaultInjector, FaultSpec
from tiergate.resilience.breaker import STATE_VALUE
from tiergate.resilience.retry import RetryBudget
from tiergate.tenancy import Reservation, Tenancy, Tenant
from tiergate.tenancy.budget import from_units
from tiergate.tier import Tier
from tiergate.types import Result

__all__ = ["Service"]

_R = TypeVar("_R")
log = logging.getLogger("tiergate")
_AUDIT_DEADLINE_S = 5.0
_GRACE_S = 0.02
# uvicorn reads a request in one loop turn and runs its handler in the next: two turns
# let requests that arrived during an inline batch join the following one.
_INLINE_GATHER_TURNS = 3
# Kinds that hold the GIL while they compute: a thread gives them no overlap, only a
# hop. (onnxruntime releases the GIL and runs its own threads: it keeps its thread.)
_GIL_BOUND_KINDS = ("sklearn", "callable")

_COST_PROBE = (
    "a gorgeous, moving film",
    "the plot is thin and the jokes fall flat, but the cast is likeable enough",
    "an ambitious mess",
)


class Service:
    """Composes tiers, calibration, guard and metrics for one :class:`ServiceConfig`.

    >>> service = Service.from_config(load_config("config.yaml"))  # doctest: +SKIP
    >>> await service.predict("a gorgeous, moving film")  # doctest: +SKIP
    """

    def __init__(
        self,
        config: ServiceConfig,
        tiers: Sequence[Tier],
        calibration: CalibrationArtifact | None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.tiers = tuple(tiers)
        self.calibration = calibration
        self.metrics = metrics or Metrics(config.service, [t.name for t in tiers])
        self.clock = clock
        self.guard = Guard(config.limits)
        self.admission = Admission(
            config.admission.max_inflight, retry_after_s=config.admission.retry_after_s
        )
        self.cascade = Cascade(
            self.tiers,
            calibration_version=calibration.version if calibration else None,
            fallback=FallbackPolicy(
                default_output=config.fallback.default_output,
                best_so_far_on_deadline=config.fallback.on_deadline == "best_so_far",
            ),
            metrics=self.metrics,
            clock=clock,
        )
        self.caches = CacheLayer.from_config(
            config,
            {t.name: t.version for t in self.tiers},
            self.cascade.calibration_version,
            self.metrics,
            clock=clock,
        )
        self.draining = False  # set on SIGTERM by tiergate.drain
        base = config.path.parent if config.path else None
        self.tenancy = Tenancy.from_config(config.auth, base, self.metrics)
        # Settlements of requests whose caller went away (kept so they are not lost).
        self._settling: set[asyncio.Future[None]] = set()
        self.monitor = _monitor(self, base) if config.monitor.enabled else None
        if self.monitor is not None:
            self.cascade.observer = self.monitor.observe_confidence
        for t in self.tiers:
            t.breaker.on_change(self._breaker_changed)
            t.batcher.on_batch = self.metrics.batch_size_by(t.name).observe
            self.metrics.cost_per_call.labels(t.name).set(t.cost_per_call)
            if t.threshold is not None:
                self.metrics.threshold_by(t.name).set(t.threshold)
            self.metrics.info.labels(
                config.service, t.name, t.version, self.cascade.calibration_version or "none"
            ).set(1)
        self.metrics.ready.set(1)

    @classmethod
    def from_config(
        cls,
        config: ServiceConfig,
        *,
        adapters: dict[str, ModelAdapter | AsyncModelAdapter] | None = None,
        require_calibration: bool = True,
        measure_costs: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> Service:
        """Load models and calibration; derive missing costs from measured CPU time.

        ``adapters`` overrides the configured models by tier name (used by tests and
        by the fault injector).
        """
        adapters = dict(adapters or {})
        calibration = read_artifact(config.calibration) if config.calibration else None
        tiers: list[Tier] = []
        workers = 1
        for i, tc in enumerate(config.tiers):
            adapter = adapters.get(tc.name) or load_adapter(tc.model, name=tc.name)
            if tc.fault is not None and not is_async(adapter):
                adapter = FaultInjector(adapter, FaultSpec(**tc.fault.model_dump()))  # type: ignore[arg-type]
            last = i == len(config.tiers) - 1
            threshold = tc.threshold
            temperature = 1.0
            if calibration is not None:
                _check_calibration(calibration, tc.name, adapter.version, str(config.calibration))
                temperature = calibration.temperatures.get(tc.name, 1.0)
                if threshold is None and not last:
                    threshold = calibration.thresholds.get(tc.name)
            if threshold is None and not last and require_calibration:
                raise ConfigError(
                    f"tier {tc.name!r} has no threshold: run `tiergate calibrate` and set "
                    f"`calibration:` in the config, or set `threshold:` on the tier"
                )
            tiers.append(
                Tier(
                    tc.name,
                    adapter,
                    threshold=None if last else (threshold if threshold is not None else 1.0),
                    temperature=temperature,
                    cost_per_call=tc.cost_per_call,
                    timeout_s=tc.timeout_ms / 1000.0,
                    workers=workers,
                    max_batch=tc.batching.max_batch,
                    max_wait_s=tc.batching.max_wait_ms / 1000.0,
                    max_queue=tc.batching.max_queue,
                    aimd_target_s=(
                        tc.batching.aimd_target_ms / 1000.0
                        if tc.batching.policy == "aimd"
                        else None
                    ),
                    breaker=BreakerPolicy(**tc.breaker.model_dump()),
                    max_retries=tc.retry.max_retries,
                    retry_budget=RetryBudget(tc.retry.budget_ratio, tc.retry.budget_burst),
                    backoff=Backoff(base_s=tc.retry.backoff_ms / 1000.0),
                    clock=clock,
                )
            )
        _check_labels(tiers)
        for t, tc in zip(tiers, config.tiers, strict=True):
            if tc.model.kind == "minilm-stack":  # priced at its head when the cache embeds
                model: Any = getattr(t.adapter, "inner", t.adapter)
                model.embedding_shared = config.cache.semantic.enabled
            if measure_costs:  # without it, 'auto' keeps the thread
                t.measure_cost(_COST_PROBE, config.pricing.cpu_second)
            t.inline = tc.executor == "inline" or (
                tc.executor == "auto"
                and tc.fault is None
                and tc.model.kind in _GIL_BOUND_KINDS
                and t.measured_call_s is not None
                and t.measured_call_s * 1000.0 < tc.inline_below_ms
            )
            if t.inline:
                t.batcher.gather_turns = _INLINE_GATHER_TURNS
        return cls(config, tiers, calibration, clock=clock)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.tiers[0].labels

    def deadline(self, deadline_ms: float | None) -> tuple[float, float]:
        """``(start, absolute deadline)`` on the service clock."""
        start = self.clock()
        ms = deadline_ms if deadline_ms is not None else self.config.default_deadline_ms
        return start, start + ms / 1000.0

    def _not_draining(self) -> None:
        if self.draining:
            raise DrainingError("this replica is shutting down; retry on another",
                                retry_after_s=1.0)  # fmt: skip

    async def predict(
        self,
        text: Any,
        deadline_ms: float | None = None,
        *,
        request_id: str | None = None,
        tenant: Tenant | None = None,
    ) -> Result:
        """Answer one input (validated here); raises a typed error if nothing can answer.

        ``request_id``: remember the answer under it for label feedback (and shadow it).
        ``tenant``: the caller's key; with a budget, the request's worst case is reserved
        on it before any tier runs (402 when it cannot be covered) and settled after.
        """
        self._not_draining()
        start, deadline = self.deadline(deadline_ms)
        clean = self.guard.text(text)
        self._admit(1)
        try:
            result = await self._answer(clean, start, deadline, tenant)
        finally:
            self.admission.release(1)
        self._account(result)
        if self.monitor is not None and request_id is not None:
            self.monitor.record(request_id, clean, result)
        if result.output is None:
            raise self._failure(result)
        if result.degraded == "deadline" and not self.cascade.fallback.best_so_far_on_deadline:
            raise DeadlineExceededError("deadline reached before the policy's answer")
        return result

    async def predict_batch(
        self,
        texts: Any,
        deadline_ms: float | None = None,
        *,
        request_id: str | None = None,
        tenant: Tenant | None = None,
    ) -> list[Result]:
        """Answer many inputs with one model call per tier; failures are per item.

        ``request_id``: item ``i`` is remembered for feedback as ``<request_id>/<i>``.
        ``tenant``: as for :meth:`predict`; the whole batch's worst case is reserved.
        """
        self._not_draining()
        start, deadline = self.deadline(deadline_ms)
        clean = self.guard.batch(texts)
        self._admit(len(clean))
        try:
            reservation = await self.tenancy.reserve(
                tenant, lambda: self.worst_costs(clean), len(self.tiers)
            )
            if reservation is None or tenant is None:

                async def compute(texts: list[str]) -> list[Result]:
                    return await self.cascade.run(texts, deadline, start=start)

                results = await self.caches.run_many(clean, compute)
            else:
                results = await self._on_budget(
                    tenant, reservation, lambda: self._batch_cached(clean, start, deadline),
                    lambda k: self.cascade.run(clean, deadline, start=start, max_tiers=k),
                )  # fmt: skip
        finally:
            self.admission.release(len(clean))
        elapsed = (self.clock() - start) * 1000.0
        results = [with_latency(r, elapsed) for r in results]
        for r in results:
            self._account(r)
        if self.monitor is not None and request_id is not None:
            for i, (text, r) in enumerate(zip(clean, results, strict=True)):
                self.monitor.record(f"{request_id}/{i}", text, r)
        return results

    def _breaker_changed(self, tier: str, state: str) -> None:
        self.metrics.breaker_transitions.labels(tier, state).inc()
        # Set at the transition too, not only at a scrape: under `--workers N` the merged
        # gauge must not show another worker's state as of its last scrape.
        self.metrics.breaker_state.labels(tier).set(STATE_VALUE[state])  # type: ignore[index]
        log.warning("circuit breaker of tier %r is now %s", tier, state)

    def worst_costs(self, texts: Sequence[str]) -> list[float]:
        """The worst-case cost of answering ``texts`` with the first 1, 2, … tiers."""
        out, total = [], 0.0
        for t in self.tiers:
            total += t.worst_cost(texts)
            out.append(total)
        return out

    async def _batch_cached(self, texts: list[str], start: float, deadline: float) -> list[Result]:
        async def compute(todo: list[str]) -> list[Result]:
            return await self.cascade.run(todo, deadline, start=start)

        return await self.caches.run_many(texts, compute)

    async def _on_budget(
        self,
        tenant: Tenant,
        reservation: Reservation,
        full: Callable[[], Awaitable[_R]],
        limited: Callable[[int], Awaitable[_R]],
    ) -> _R:
        """Run ``full()`` (or ``limited(k)`` when the budget covers only the first ``k``
        tiers: no cache, so no other request shares a budget-limited answer), then settle
        the reservation to the actual cost. If the outcome is unknown (the caller went
        away mid-way), the whole reservation is charged: spend is never under-counted."""
        try:
            if reservation.tiers >= len(self.tiers):
                out = await full()
            else:
                out = await limited(reservation.tiers)
        except BaseException:
            task = asyncio.ensure_future(
                self.tenancy.settle(tenant, reservation, from_units(reservation.units))
            )
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            raise
        results: list[Result] = out if isinstance(out, list) else [out]  # type: ignore[list-item]
        await self.tenancy.settle(tenant, reservation, sum(r.cost for r in results))
        return out

    async def _answer(
        self, text: str, start: float, deadline: float, tenant: Tenant | None = None
    ) -> Result:
        # An exact hit is answered inline: no task, no timer (the common case under load).
        key, hit = await self.caches.exact_hit(text)
        if hit is not None:
            return hit.with_latency((self.clock() - start) * 1000.0)
        if tenant is not None and tenant.budget is not None:
            reservation = await self.tenancy.reserve(
                tenant, lambda: self.worst_costs([text]), len(self.tiers)
            )
            assert reservation is not None

            async def limited(k: int) -> Result:
                (r,) = await self.cascade.run([text], deadline, start=start, max_tiers=k)
                return r.with_latency((self.clock() - start) * 1000.0)

            return await self._on_budget(
                tenant, reservation, lambda: self._computed(text, start, deadline, key), limited
            )
        return await self._computed(text, start, deadline, key)

    async def _computed(self, text: str, start: float, deadline: float, key: Any) -> Result:

        async def compute() -> Result:
            (r,) = await self.cascade.run([text], deadline, start=start)
            return r

        async def audit() -> Result:
            # Re-answering a semantic hit to check it: its own, generous deadline.
            (r,) = await self.cascade.run([text], self.clock() + _AUDIT_DEADLINE_S)
            return r

        # A request waiting on an identical in-flight one still keeps its deadline.
        # The cascade answers by the deadline itself (with its best answer so far); this
        # outer bound is only a safety net for a cascade that hangs. On a saturated event
        # loop the cascade's own deadline and this one can come due in the same loop
        # turn, so a late cascade gets a second grace period to deliver the answer it
        # already has before it is given up (a late answer beats a 504).
        grace = _GRACE_S + 0.1 * (deadline - start)
        work = asyncio.ensure_future(
            self.caches.get_or_compute(text, compute, audit, exact_key=key)
        )
        try:
            done, _ = await asyncio.wait({work}, timeout=max(deadline - self.clock(), 0.0) + grace)
            if not done:
                done, _ = await asyncio.wait({work}, timeout=grace)
            if not done:
                work.cancel()
                raise TimeoutError
            result = work.result()
        except TimeoutError:
            result = Result(
                output=None, confidence=None, tier=None, path=(), cache=None,
                degraded="deadline", latency_ms=0.0, cost=0.0, model_version=None,
                calibration_version=self.cascade.calibration_version,
            )  # fmt: skip
        except BaseException:  # the caller went away: stop the work it asked for
            work.cancel()
            raise
        return result.with_latency((self.clock() - start) * 1000.0)

    def _admit(self, weight: int) -> None:
        try:
            self.admission.acquire(weight)
        except OverloadError:
            self.metrics.shed.inc()
            raise

    def metrics_text(self) -> bytes:
        """Prometheus exposition, with point-in-time gauges refreshed."""
        for t in self.tiers:
            self.metrics.breaker_state.labels(t.name).set(STATE_VALUE[t.breaker.state])
        self.metrics.inflight.set(self.admission.inflight)
        if self.monitor is not None:
            self.monitor.refresh_metrics()
        return self.metrics.render()

    def _account(self, result: Result) -> None:
        self.metrics.observe_result(result)

    @staticmethod
    def _failure(result: Result) -> Exception:
        reason = result.degraded or "no_tier"
        if reason == "overload":
            return OverloadError("the service is overloaded; retry later", reason=reason)
        if reason == "deadline" or reason.startswith("tier_timeout"):
            return DeadlineExceededError(
                f"no tier answered within the deadline ({reason}) and no fallback is configured",
                reason=reason,
                path=list(result.path),
            )
        return ModelError(
            f"no tier could answer ({reason}) and no fallback is configured",
            reason=reason,
            path=list(result.path),
        )

    async def feedback(self, request_id: Any, label: Any) -> dict[str, Any]:
        """A true label for a recent answer (``POST /v1/feedback``)."""
        if self.monitor is None:
            raise InputError("feedback is off: `monitor.enabled` is false in the config")
        return await self.monitor.label(request_id, label)

    def set_threshold(self, tier: str, threshold: float, reason: str) -> None:
        """Move a tier's threshold now (drift tightening, an operator); recorded."""
        t = next((t for t in self.tiers[:-1] if t.name == tier), None)
        if t is None:
            raise InputError(f"{tier!r} is not a tier with a threshold")
        old, t.threshold = t.threshold, threshold
        self.metrics.threshold_by(tier).set(threshold)
        self.caches.rebind(self.cascade.calibration_version, self._thresholds())
        if self.monitor is not None:
            self.monitor.record_change(tier, old, threshold, reason)

    def _thresholds(self) -> dict[str, float | None]:
        return {t.name: t.threshold for t in self.tiers}

    def reload(self) -> dict[str, Any]:
        """Load the configured calibration file again and switch to it at once.

        Checked first (format, model versions): on any problem the running calibration
        stays and a :class:`ConfigError` says why. The switch itself has no ``await``:
        a request sees the old calibration or the new one, never a mix. Caches move to
        the new version's namespace; the monitor starts over.
        """
        path = self.config.calibration
        if path is None:
            raise ConfigError("this service has no `calibration:` file to reload")
        art = read_artifact(path)
        for t in self.tiers:
            _check_calibration(art, t.name, t.version, str(path))
        old_version = self.cascade.calibration_version
        old = self._thresholds()
        configured = {tc.name: tc.threshold for tc in self.config.tiers}
        for t in self.tiers:
            t.temperature = art.temperatures.get(t.name, 1.0)
            if t.threshold is not None and configured.get(t.name) is None:
                t.threshold = art.thresholds.get(t.name, t.threshold)
                self.metrics.threshold_by(t.name).set(t.threshold)
        self.calibration = art
        self.cascade.calibration_version = art.version
        self.caches.rebind(art.version, self._thresholds())
        for t in self.tiers:
            with contextlib.suppress(KeyError):
                self.metrics.info.remove(
                    self.config.service, t.name, t.version, old_version or "none"
                )
            self.metrics.info.labels(self.config.service, t.name, t.version, art.version).set(1)
        new = self._thresholds()
        if self.monitor is not None:
            self.monitor.reset(art, _target(art, self.config))
            for name, thr in new.items():
                if thr != old[name]:
                    self.monitor.record_change(name, old[name], thr, "reload")
        log.warning("calibration reloaded: %s -> %s", old_version, art.version)
        return {"calibration_version": art.version, "previous_version": old_version,
                "thresholds": new, "previous_thresholds": old}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """What /readyz reports: tiers, versions, thresholds, costs."""
        return {
            "service": self.config.service,
            "calibration_version": self.cascade.calibration_version,
            "cpu_count": os.cpu_count(),
            **self.tenancy.describe(),
            "monitor": self.monitor.describe() if self.monitor else {"enabled": False},
            "tiers": [
                {
                    **t.describe(),
                    "timeout_ms": t.timeout_s * 1000.0,
                    "breaker": t.breaker.state,
                    "fault_injection": isinstance(t.adapter, FaultInjector),
                    **({"upstream": t.adapter.status()} if t.remote else {}),  # type: ignore[union-attr]
                }
                for t in self.tiers
            ],
        }

    async def start(self) -> None:
        """Probe remote tiers (typed error if one is not ready); a no-op in process."""
        for t in self.tiers:
            await t.start()

    async def aclose(self) -> None:
        """Close caches (background audits, Redis connections) and tiers."""
        await self.caches.aclose()
        if self._settling:  # budgets settled before their store closes
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.tenancy.aclose()
        if self.monitor is not None:
            await self.monitor.aclose()
        for t in self.tiers:
            await t.aclose()

    def close(self) -> None:
        for t in self.tiers:
            t.close()


def _target(art: CalibrationArtifact | None, config: ServiceConfig) -> float | None:
    if art is not None and art.target_accuracy is not None:
        return art.target_accuracy
    return config.slo.accuracy


def _monitor(service: Service, base: Path | None) -> Monitor:
    mc = service.config.monitor
    shared = None
    if mc.feedback.store == "redis":
        from tiergate.cache import RedisStore

        prefix = f"tiergate:feedback:{service.config.service}:".encode()
        shared = RedisStore(mc.feedback.redis_url, key_prefix=prefix,
                            default_ttl_s=mc.feedback.ttl_s, name="feedback")  # fmt: skip
    return Monitor(
        mc, service.tiers, service.calibration, service.metrics,
        target_accuracy=_target(service.calibration, service.config),
        set_threshold=service.set_threshold, shared=shared, log_path=mc.resolved_log(base),
    )  # fmt: skip


def _check_calibration(art: CalibrationArtifact, tier: str, version: str, path: str) -> None:
    calibrated = art.model_versions.get(tier)
    if calibrated is None:
        raise ConfigError(f"{path} has no entry for tier {tier!r}; rerun `tiergate calibrate`")
    if calibrated != version:
        raise ConfigError(
            f"{path} was made for model version {calibrated} of tier {tier!r}, but the "
            f"loaded model is {version}; rerun `tiergate calibrate` for the new model"
        )


def _check_labels(tiers: Sequence[Tier]) -> None:
    first = set(tiers[0].labels)
    for t in tiers[1:]:
        if set(t.labels) != first:
            raise ConfigError(
                f"tier {t.name!r} has labels {sorted(t.labels)}, but tier "
                f"{tiers[0].name!r} has {sorted(first)}; all tiers must share one label set"
            )
