"""Semantic cache: answer a new input with the cached answer of a near-identical one.

The input is embedded (a small sentence model), the nearest cached entry is found, and
its answer is served only if the cosine similarity reaches a threshold calibrated so
that the false-hit rate stays under a declared bound (see :mod:`tiergate.cache.calibrate`).
A sample of hits is re-checked against the real cascade in the background
(:mod:`tiergate.cache.audit`); the threshold tightens itself if the bound is not met.

Hits never reveal the matched input (another user's text): only its similarity.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tiergate.cache._codec import cacheable, decode, encode_for_store
from tiergate.cache.audit import AuditPolicy, FalseHitMonitor
from tiergate.cache.index import Embeddings, NumpyIndex, VectorIndex
from tiergate.cache.metrics import CacheMetrics, NullCacheMetrics
from tiergate.errors import ConfigError
from tiergate.types import Result

__all__ = ["Embedder", "SemanticCache", "SemanticLookup"]

_log = logging.getLogger("tiergate.cache")


class Embedder(Protocol):
    """Maps texts to an ``(n, dim)`` float32 array of L2-normalised rows."""

    def embed(self, texts: Sequence[str]) -> Embeddings: ...


@dataclass(frozen=True)
class SemanticLookup:
    """One lookup: the hit (or ``None``), the best similarity seen, the query vector
    (pass it back to :meth:`SemanticCache.put` to avoid embedding twice)."""

    result: Result | None
    similarity: float | None
    vector: Embeddings | None


class SemanticCache:
    """Nearest-neighbour cache of answers over sentence embeddings.

    >>> cache = SemanticCache(load_minilm_embedder(cache_dir), threshold=0.95)  # doctest: +SKIP
    >>> result = await cache.get_or_compute(text, lambda: cascade_answer(text))  # doctest: +SKIP

    ``offload=True`` runs embedding and search in a worker thread so the event loop
    stays free; ``random`` draws the audit sample (inject a seeded one in tests).
    """

    kind = "semantic"

    def __init__(
        self,
        embedder: Embedder,
        threshold: float,
        *,
        index: VectorIndex[bytes] | None = None,
        capacity: int = 100_000,
        audit: AuditPolicy | None = None,
        offload: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        random: Callable[[], float] | None = None,
        metrics: CacheMetrics | None = None,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"semantic threshold must be in (0, 1], got {threshold}")
        self.embedder = embedder
        self.index: VectorIndex[bytes] = index or NumpyIndex[bytes](capacity)
        self.audit_policy = audit or AuditPolicy()
        self.monitor = FalseHitMonitor(self.audit_policy, threshold, metrics=metrics)
        self._offload = offload
        self._clock = clock
        self._random = random or _random.Random(0).random
        self._metrics = metrics or NullCacheMetrics()
        self._audits: set[asyncio.Task[None]] = set()
        self.audit_errors = 0

    def __repr__(self) -> str:
        return f"SemanticCache(threshold={self.threshold:.4f}, entries={len(self.index)})"

    @property
    def threshold(self) -> float:
        """Current similarity threshold (raised by the audit when needed)."""
        return self.monitor.threshold

    @property
    def false_hit_rate(self) -> float:
        """Measured false-hit rate among audited hits at the current threshold."""
        return self.monitor.false_hit_rate

    async def _call(self, fn: Callable[[], Embeddings]) -> Embeddings:
        return await asyncio.to_thread(fn) if self._offload else fn()

    def _lookup_sync(
        self, texts: Sequence[str]
    ) -> tuple[Embeddings, list[float | None], list[bytes | None]]:
        vectors = self.embedder.embed(texts)
        matches = self.index.search(vectors)
        threshold = self.threshold
        sims = [None if m is None else m.similarity for m in matches]
        hits = [m for m in matches if m is not None and m.similarity >= threshold]
        self.index.touch([m.slot for m in hits])
        raws = [m.payload if m is not None and m.similarity >= threshold else None for m in matches]
        return vectors, sims, raws

    async def lookup_many(self, texts: Sequence[str]) -> list[SemanticLookup]:
        """Look ``texts`` up with one embedding call; never raises (errors are misses)."""
        started = self._clock()
        try:
            if self._offload:
                vectors, sims, raws = await asyncio.to_thread(self._lookup_sync, texts)
            else:
                vectors, sims, raws = self._lookup_sync(texts)
        except Exception as exc:  # the cache must not fail a request the cascade can answer
            _log.warning("semantic cache lookup failed; treating as a miss: %s", exc, exc_info=True)
            for _ in texts:
                self._metrics.lookup(self.kind, "error", self._clock() - started)
            return [SemanticLookup(None, None, None) for _ in texts]
        ms = (self._clock() - started) * 1000.0
        out: list[SemanticLookup] = []
        for i, (sim, raw) in enumerate(zip(sims, raws, strict=True)):
            hit = None
            if raw is not None:
                try:
                    hit = decode(raw, "semantic", ms, {"similarity": float(sim or 0.0)})
                except (ValueError, KeyError, TypeError) as exc:
                    _log.warning("ignoring a malformed semantic-cache entry: %s", exc)
            self._metrics.lookup(self.kind, "miss" if hit is None else "hit", ms / 1000.0)
            out.append(SemanticLookup(hit, sim, vectors[i : i + 1]))
        return out

    async def lookup(self, text: str) -> SemanticLookup:
        (one,) = await self.lookup_many([text])
        return one

    async def put(self, text: str, result: Result, vector: Embeddings | None = None) -> bool:
        """Add ``result`` for ``text`` if it may be cached (not degraded, not a hit)."""
        value = encode_for_store(result)
        ok = value is not None
        if value is not None:
            vec = (
                vector
                if vector is not None
                else await self._call(lambda: self.embedder.embed([text]))
            )
            add = self.index.add
            vec32 = np.asarray(vec, dtype=np.float32)
            # Offloaded too: the index lock may be held by a search in a worker thread.
            evicted = (
                await asyncio.to_thread(add, vec32, [value])
                if self._offload
                else add(vec32, [value])
            )
            if evicted:
                self._metrics.eviction("semantic", evicted)
            self._metrics.entries(self.kind, len(self.index))
        self._metrics.stored(self.kind, ok)
        return ok

    async def get_or_compute(
        self,
        text: str,
        compute: Callable[[], Awaitable[Result]],
        *,
        audit: Callable[[], Awaitable[Result]] | None = None,
    ) -> Result:
        """A semantic hit, else ``await compute()`` (then cached).

        On a hit, with probability ``audit_policy.rate`` the real answer is computed in
        the background with ``audit`` (default ``compute``; pass one with its own,
        longer deadline) and compared (see :meth:`record_audit`).
        """
        found = await self.lookup(text)
        if found.result is not None:
            if self.should_audit():
                self.spawn_audit(found.result, audit or compute)
            return found.result
        result = await compute()
        await self.put(text, result, found.vector)
        return result

    def should_audit(self) -> bool:
        """Draw whether to audit one hit (respects ``rate`` and ``max_pending``)."""
        p = self.audit_policy
        return len(self._audits) < p.max_pending and self._random() < p.rate

    def spawn_audit(self, hit: Result, compute: Callable[[], Awaitable[Result]]) -> None:
        """Re-answer ``hit``'s input in the background and record the outcome."""
        task = asyncio.create_task(self._audit(hit, compute), name="tiergate-semantic-audit")
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _audit(self, hit: Result, compute: Callable[[], Awaitable[Result]]) -> None:
        try:
            truth = await compute()
        except Exception as exc:  # an audit must never hurt serving; it is counted
            self.audit_errors += 1
            _log.warning("semantic cache audit failed: %s", exc)
            return
        self.record_audit(hit, truth)

    def record_audit(self, hit: Result, truth: Result) -> bool | None:
        """Compare a semantic ``hit`` with the cascade's own answer for the same input.

        Returns whether it was a false hit, or ``None`` if ``truth`` is not the policy's
        answer (degraded, failed or itself cached) and so proves nothing.
        """
        if not cacheable(truth):
            return None
        cached_from = hit.extra.get("cached_from") or {}
        similarity = float(cached_from.get("similarity", self.threshold))
        false_hit = truth.output != hit.output
        self.monitor.record(similarity, false_hit)
        return false_hit

    async def drain(self) -> None:
        """Wait for the background audits in progress (tests, shutdown)."""
        while self._audits:
            await asyncio.gather(*list(self._audits))

    async def aclose(self) -> None:
        """Cancel background audits and drop all entries."""
        for task in list(self._audits):
            task.cancel()
        await asyncio.gather(*list(self._audits), return_exceptions=True)
        self.index.clear()
        self._metrics.entries(self.kind, 0)
