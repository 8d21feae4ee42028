"""Exact cache: the same normalised input under the same versions gets the same answer.

The key is a BLAKE2b hash of the normalised text *and* a namespace naming everything
the answer depends on (service, every tier's model version, calibration version,
config hash), so a new model or calibration can never be served an old answer.
Identical concurrent requests share one computation (single-flight); only the
policy's own non-degraded answers are stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence

from tiergate.cache._codec import decode, encode_for_store
from tiergate.cache.metrics import CacheMetrics, NullCacheMetrics
from tiergate.cache.store import CacheStore
from tiergate.types import Result

__all__ = ["ExactCache", "make_namespace", "normalise_text"]

_log = logging.getLogger("tiergate.cache")

# Same rules as tiergate.guard (kept idempotent on its output): NFC, no control or
# zero-width characters, whitespace collapsed. No case folding: models may be
# case-sensitive, and a cache must not answer for an input the models never saw.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The text the key is derived from: NFC, control characters removed, spaces collapsed."""
    return _SPACE.sub(" ", _CONTROL.sub("", unicodedata.normalize("NFC", text))).strip()


def make_namespace(
    service: str,
    model_versions: Mapping[str, str],
    calibration_version: str | None,
    config_hash: str = "",
) -> str:
    """One string naming everything a cached answer depends on.

    >>> make_namespace("reviews", {"fast": "a1", "accurate": "b2"}, "c3", "d4")
    'reviews|fast=a1,accurate=b2|cal=c3|cfg=d4'
    """
    tiers = ",".join(f"{name}={version}" for name, version in model_versions.items())
    return f"{service}|{tiers}|cal={calibration_version or 'none'}|cfg={config_hash}"


class _Flight:
    """One in-progress computation that identical requests wait on."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None


class ExactCache:
    """Cache of whole answers by exact (normalised) input.

    >>> cache = ExactCache(MemoryStore(), make_namespace("svc", {"fast": "v1"}, "cal1"))
    >>> result = await cache.get_or_compute(text, lambda: cascade_answer(text))  # doctest: +SKIP
    """

    kind = "exact"

    def __init__(
        self,
        store: CacheStore,
        namespace: str,
        *,
        ttl_s: float | None = 3600.0,
        clock: Callable[[], float] = time.perf_counter,
        metrics: CacheMetrics | None = None,
        normalised_inputs: bool = False,
    ) -> None:
        self.store = store
        # The service's inputs come out of tiergate.guard, which already applies
        # normalise_text's rules: hashing them as they are saves a second pass.
        self._normalise = (lambda t: t) if normalised_inputs else normalise_text
        self.namespace = namespace
        self.ttl_s = ttl_s
        self._clock = clock
        self._metrics = metrics or NullCacheMetrics()
        self._ns = hashlib.blake2b(namespace.encode(), digest_size=16).digest()
        self._flights: dict[bytes, _Flight] = {}

    def __repr__(self) -> str:
        return f"ExactCache({self.store!r}, namespace={self.namespace!r})"

    def rebind(self, namespace: str) -> None:
        """Look up and store under ``namespace`` from now on (old entries age out)."""
        self.namespace = namespace
        self._ns = hashlib.blake2b(namespace.encode(), digest_size=16).digest()

    def key(self, text: str) -> bytes:
        """``b"x:" + 32 hex digits`` of BLAKE2b(namespace digest, normalised text)."""
        h = hashlib.blake2b(self._ns, digest_size=16)
        h.update(self._normalise(text).encode("utf-8", "surrogatepass"))
        return b"x:" + h.hexdigest().encode()

    async def lookup(self, key: bytes) -> Result | None:
        """The cached answer under ``key`` (from :meth:`key`), counted as a hit or a miss.

        For callers that try the cache before setting up a computation; they then pass
        ``looked_up=True`` to :meth:`get_or_compute` so the store is not asked twice.
        """
        started = self._clock()
        hit = self._decode(await self.store.get(key), started)
        self._metrics.lookup(self.kind, "miss" if hit is None else "hit", self._clock() - started)
        return hit

    def _decode(self, raw: bytes | None, started: float) -> Result | None:
        if raw is None:
            return None
        try:
            return decode(raw, "exact", (self._clock() - started) * 1000.0)
        except (ValueError, KeyError, TypeError) as exc:
            _log.warning("ignoring a malformed exact-cache entry: %s", exc)
            return None

    async def get(self, text: str) -> Result | None:
        """The cached answer for ``text``, or ``None``."""
        (hit,) = await self.get_many([text])
        return hit

    async def get_many(self, texts: Sequence[str]) -> list[Result | None]:
        """Cached answers for ``texts`` in one store round trip (``MGET`` on Redis)."""
        started = self._clock()
        raws = await self.store.get_many([self.key(t) for t in texts])
        hits = [self._decode(raw, started) for raw in raws]
        seconds = self._clock() - started
        for hit in hits:
            self._metrics.lookup(self.kind, "miss" if hit is None else "hit", seconds)
        return hits

    async def put(self, text: str, result: Result) -> bool:
        """Store ``result`` if it may be cached (see :meth:`put_key`)."""
        return await self.put_key(self.key(text), result)

    async def put_key(self, key: bytes, result: Result) -> bool:
        """Store ``result`` unless it is degraded, empty or itself a cache hit."""
        value = encode_for_store(result)
        if value is not None:
            await self.store.set(key, value, self.ttl_s)
        self._metrics.stored(self.kind, value is not None)
        return value is not None

    async def put_many(self, texts: Sequence[str], results: Sequence[Result]) -> int:
        """Store every cacheable result in one store call; returns how many were stored."""
        items: list[tuple[bytes, bytes]] = []
        for text, result in zip(texts, results, strict=True):
            value = encode_for_store(result)
            self._metrics.stored(self.kind, value is not None)
            if value is not None:
                items.append((self.key(text), value))
        if items:
            await self.store.set_many(items, self.ttl_s)
        return len(items)

    async def get_or_compute(
        self,
        text: str,
        compute: Callable[[], Awaitable[Result]],
        *,
        key: bytes | None = None,
        looked_up: bool = False,
    ) -> Result:
        """The cached answer, else ``await compute()`` (stored if cacheable).

        Concurrent calls for the same key share one lookup and one computation: they
        get the leader's result, or its exception. If the leader is cancelled, a
        waiting caller takes over. ``looked_up``: the caller just missed in
        :meth:`lookup` under ``key``; go straight to computing (or joining).
        """
        key = key if key is not None else self.key(text)
        while (flight := self._flights.get(key)) is not None:
            started = self._clock()
            await flight.done.wait()
            if flight.result is not None:
                self._metrics.lookup(self.kind, "coalesced", self._clock() - started)
                return flight.result
            if flight.error is not None:
                raise flight.error
        flight = self._flights[key] = _Flight()
        try:
            hit = None if looked_up else await self.lookup(key)
            if hit is not None:
                flight.result = hit
                return hit
            result = await compute()
            await self.put_key(key, result)
            flight.result = result
            return result
        except asyncio.CancelledError:
            raise  # waiters see neither result nor error and retry themselves
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            flight.done.set()
            del self._flights[key]

    @property
    def in_flight(self) -> int:
        """Computations currently running (distinct keys)."""
        return len(self._flights)
