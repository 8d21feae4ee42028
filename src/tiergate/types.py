"""Value types shared across the service: what a tier says, what a request gets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = list(self.path)
        extra = d.pop("extra")
        d.update(extra)
        return d
