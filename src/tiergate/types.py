"""Value types shared across the service: what a tier says, what a request gets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CacheKind", "Result", "TierAnswer"]

CacheKind = Literal["exact", "semantic"]


@dataclass(frozen=True, slots=True)
class TierAnswer:
    """One tier's answer to one input: label, calibrated confidence, what it cost."""

    tier: str
    output: str
    confidence: float
    cost: float
    latency_ms: float
    model_version: str


@dataclass(frozen=True, slots=True)
class Result:
    """The response to one input, as the HTTP API returns it.

    ``path`` lists every tier tried, in order; ``degraded`` names why this is not the
    answer the policy wanted (``None`` when it is).
    """

    output: str | None
    confidence: float | None
    tier: str | None
    path: tuple[str, ...]
    cache: CacheKind | None
    degraded: str | None
    latency_ms: float
    cost: float
    model_version: str | None
    calibration_version: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def with_latency(self, latency_ms: float) -> Result:
        """The same answer with another ``latency_ms`` (faster than ``dataclasses.replace``)."""
        return Result(
            self.output, self.confidence, self.tier, self.path, self.cache, self.degraded,
            latency_ms, self.cost, self.model_version, self.calibration_version, self.extra,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        # Built by hand: ``dataclasses.asdict`` deep-copies recursively, and this runs
        # once per answer on the hot path.
        d: dict[str, Any] = {
            "output": self.output,
            "confidence": self.confidence,
            "tier": self.tier,
            "path": list(self.path),
            "cache": self.cache,
            "degraded": self.degraded,
            "latency_ms": self.latency_ms,
            "cost": self.cost,
            "model_version": self.model_version,
            "calibration_version": self.calibration_version,
        }
        if self.extra:
            d.update(self.extra)
        return d
