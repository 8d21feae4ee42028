"""How a cached answer is stored (orjson bytes) and how a hit is reported.

A hit keeps the original ``tier``/``path``/versions, costs nothing, reports the lookup
latency, and says where it came from in ``extra["cached_from"]``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from tiergate.types import CacheKind, Result

_FORMAT = 1


_log = logging.getLogger("tiergate.cache")


def cacheable(result: Result) -> bool:
    """Only the policy's own, freshly computed answers may be cached."""
    return result.degraded is None and result.output is not None and result.cache is None


def encode(result: Result) -> bytes:
    """Raises ``TypeError`` if ``result.extra`` is not JSON-serialisable."""
    return orjson.dumps(
        {
            "f": _FORMAT,
            "o": result.output,
            "c": result.confidence,
            "t": result.tier,
            "p": list(result.path),
            "m": result.model_version,
            "v": result.calibration_version,
            "k": result.cost,
            "x": result.extra,
        }
    )


def decode(
    raw: bytes, kind: CacheKind, latency_ms: float, provenance: dict[str, Any] | None = None
) -> Result:
    """Raises ``ValueError`` (or ``KeyError``/``TypeError``) on a malformed entry."""
    d = orjson.loads(raw)
    if d.get("f") != _FORMAT or not isinstance(d["o"], str):
        raise ValueError("unknown cache entry format")
    cached_from: dict[str, Any] = {
        "tier": d["t"],
        "path": list(d["p"]),
        "model_version": d["m"],
        "calibration_version": d["v"],
        "cost": d["k"],
    }
    cached_from.update(provenance or {})
    extra = dict(d["x"] or {})
    extra["cached_from"] = cached_from
    return Result(
        output=d["o"],
        confidence=d["c"],
        tier=d["t"],
        path=tuple(d["p"]),
        cache=kind,
        degraded=None,
        latency_ms=latency_ms,
        cost=0.0,
        model_version=d["m"],
        calibration_version=d["v"],
        extra=extra,
    )


def encode_for_store(result: Result) -> bytes | None:
    """The stored bytes of ``result``, or ``None`` if it must not (or cannot) be cached."""
    if not cacheable(result):
        return None
    try:
        return encode(result)
    except TypeError as exc:
        _log.warning("not caching an answer whose extra fields are not JSON: %s", exc)
        return None
