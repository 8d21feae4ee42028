"""The caches in front of the cascade, built from config (see :mod:`tiergate.cache`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tiergate.cache import (
    AuditPolicy,
    ExactCache,
    LayeredStore,
    MemoryStore,
    PrometheusCacheMetrics,
    RedisStore,
    SemanticCache,
    make_namespace,
)
from tiergate.cache.store import CacheStore
from tiergate.config import ServiceConfig, tiergate_home
from tiergate.errors import ConfigError
from tiergate.metrics import Metrics
from tiergate.types import Result

__all__ = ["CacheLayer"]

Compute = Callable[[], Awaitable[Result]]


class CacheLayer:
    """Exact cache, then semantic cache, then the cascade (``compute``).

    The exact key covers every tier's model version, the calibration version and the
    tier settings, so a new model, calibration or policy never serves an old answer.
    """

    def __init__(
        self,
        exact: ExactCache | None,
        semantic: SemanticCache | None,
        *,
        rename: Callable[[str | None, str], str] | None = None,
    ) -> None:
        self.exact = exact
        self.semantic = semantic
        self._rename = rename

    def rebind(self, calibration_version: str | None, thresholds: dict[str, float | None]) -> None:
        """A new calibration or threshold is live: never serve an answer of the old one.

        The exact cache moves to a namespace naming the calibration and the thresholds
        in force (entries of the old one age out); the semantic index is emptied.
        """
        if self.exact is not None and self._rename is not None:
            live = json.dumps(thresholds, sort_keys=True).encode()
            self.exact.rebind(
                self._rename(calibration_version, hashlib.sha256(live).hexdigest()[:8])
            )
        if self.semantic is not None:
            self.semantic.index.clear()

    def __repr__(self) -> str:
        return f"CacheLayer(exact={self.exact!r}, semantic={self.semantic!r})"

    @classmethod
    def from_config(
        cls,
        config: ServiceConfig,
        model_versions: dict[str, str],
        calibration_version: str | None,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> CacheLayer:
        cm = PrometheusCacheMetrics(metrics.registry, lookups=metrics.cache)
        policy = json.dumps(
            [t.model_dump(mode="json", exclude={"fault"}) for t in config.tiers], sort_keys=True
        )
        policy_hash = hashlib.sha256(policy.encode()).hexdigest()[:12]

        def rename(calibration: str | None, live: str) -> str:
            return make_namespace(
                config.service, model_versions, calibration, f"{policy_hash}+{live}"
            )

        namespace = make_namespace(config.service, model_versions, calibration_version, policy_hash)
        ec = config.cache.exact
        exact = None
        if ec.enabled:
            store: CacheStore
            memory = MemoryStore(ec.max_items, default_ttl_s=ec.ttl_s, metrics=cm)
            if ec.backend == "memory":
                store = memory
            else:
                redis = RedisStore(ec.redis_url, default_ttl_s=ec.ttl_s, metrics=cm)
                store = (
                    redis if ec.backend == "redis"
                    else LayeredStore(memory, redis, near_ttl_s=ec.near_ttl_s)
                )  # fmt: skip
            exact = ExactCache(
                store, namespace, ttl_s=ec.ttl_s, clock=clock, metrics=cm, normalised_inputs=True
            )
        sc = config.cache.semantic
        semantic = None
        if sc.enabled:
            from tiergate.cache import shared_minilm_embedder

            threshold = sc.threshold
            if threshold is None and sc.calibration is not None:
                threshold = _semantic_threshold(sc.calibration.read_text(), namespace)
            assert threshold is not None  # config validation guarantees a source
            semantic = SemanticCache(
                shared_minilm_embedder(tiergate_home() / "minilm"),
                threshold,
                capacity=sc.capacity,
                audit=AuditPolicy(rate=sc.audit_rate, bound=sc.false_hit_bound),
                clock=clock,
                metrics=cm,
            )
        return cls(exact, semantic, rename=rename)

    async def exact_hit(self, text: str) -> tuple[bytes | None, Result | None]:
        """Try the exact cache alone: ``(key, hit)``; ``(None, None)`` without one.

        The service calls it inline, before it sets up a deadline-bounded computation,
        and passes ``key`` on to :meth:`get_or_compute` after a miss.
        """
        if self.exact is None:
            return None, None
        key = self.exact.key(text)
        return key, await self.exact.lookup(key)

    async def get_or_compute(
        self, text: str, compute: Compute, audit: Compute, *, exact_key: bytes | None = None
    ) -> Result:
        """One input: exact hit, else semantic hit, else ``compute()`` (stored if clean).

        ``exact_key``: :meth:`exact_hit` just missed under this key.
        """
        inner = compute
        if self.semantic is not None:
            semantic = self.semantic

            async def inner() -> Result:
                return await semantic.get_or_compute(text, compute, audit=audit)

        if self.exact is None:
            return await inner()
        return await self.exact.get_or_compute(
            text, inner, key=exact_key, looked_up=exact_key is not None
        )

    async def run_many(
        self, texts: Sequence[str], compute: Callable[[list[str]], Awaitable[list[Result]]]
    ) -> list[Result]:
        """Many inputs: one store round trip, then one cascade run for what missed."""
        results: list[Result | None] = [None] * len(texts)
        if self.exact is not None:
            results = list(await self.exact.get_many(texts))
        vectors: dict[int, Any] = {}
        if self.semantic is not None:
            todo = [i for i, r in enumerate(results) if r is None]
            if todo:
                found = await self.semantic.lookup_many([texts[i] for i in todo])
                for i, f in zip(todo, found, strict=True):
                    results[i] = f.result
                    vectors[i] = f.vector
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            fresh = await compute([texts[i] for i in todo])
            for i, r in zip(todo, fresh, strict=True):
                results[i] = r
            if self.exact is not None:
                await self.exact.put_many([texts[i] for i in todo], fresh)
            if self.semantic is not None:
                for i, r in zip(todo, fresh, strict=True):
                    await self.semantic.put(texts[i], r, vectors.get(i))
        return [r for r in results if r is not None]

    async def aclose(self) -> None:
        if self.semantic is not None:
            await self.semantic.aclose()
        if self.exact is not None:
            close = getattr(self.exact.store, "close", None)
            if close is not None:
                res = close()
                if asyncio.iscoroutine(res):
                    await res


def _semantic_threshold(text: str, namespace: str) -> float:
    try:
        body = json.loads(text)
        threshold = float(body["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"semantic cache calibration is not valid: {exc}") from exc
    if body.get("namespace") not in (None, namespace):
        raise ConfigError(
            "the semantic cache calibration was made for other models or calibration; "
            "recalibrate the semantic cache"
        )
    return threshold


def with_latency(result: Result, latency_ms: float) -> Result:
    """The same answer with end-to-end latency."""
    return result.with_latency(latency_ms)
