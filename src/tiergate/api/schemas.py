"""Request/response schemas, for validation documentation in OpenAPI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BatchRequest",
    "BatchResponse",
    "ErrorBody",
    "ErrorResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "PredictRequest",
    "PredictResponse",
]


class PredictRequest(BaseModel):
    """One input to classify."""

    model_config = ConfigDict(extra="forbid")
    input: str = Field(description="Text to classify.", min_length=1)
    deadline_ms: float | None = Field(
        None, ge=10, le=600_000, description="Answer within this many ms (default from config)."
    )


class BatchRequest(BaseModel):
    """Many inputs, answered with one model call per tier."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(description="Texts to classify.", min_length=1)
    deadline_ms: float | None = Field(None, ge=10, le=600_000, description="Deadline for all.")


class PredictResponse(BaseModel):
    """One answer, with how it was produced."""

    output: str | None = Field(description="Predicted label (null only if every tier failed).")
    confidence: float | None = Field(description="Calibrated confidence of the answering tier.")
    tier: str | None = Field(description="Tier that produced the answer.")
    path: list[str] = Field(description="Every tier tried, in order.")
    cache: Literal["exact", "semantic"] | None = Field(description="Cache that answered, if any.")
    degraded: str | None = Field(description="Why this is not the policy's answer, if it is not.")
    latency_ms: float = Field(description="Time spent in the service, ms.")
    cost: float = Field(description="Cost of the tiers tried, currency units.")
    model_version: str | None = Field(description="Version of the answering model.")
    calibration_version: str | None = Field(description="Version of the calibration artifact.")


class BatchResponse(BaseModel):
    """Answers in input order."""

    results: list[PredictResponse]


class FeedbackRequest(BaseModel):
    """The true label of an answer given recently, by its request id."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(
        description="The answer's X-Request-Id (batch item i: `<id>/<i>`).", min_length=1
    )
    label: str = Field(description="The true label (one of the service's labels).")


class FeedbackResponse(BaseModel):
    """What the label said about the answer."""

    request_id: str
    correct: bool = Field(description="The served answer equals the label.")
    output: str = Field(description="The answer that was served.")
    tier: str | None = Field(description="Tier that answered (null for a cached answer).")
    cache: Literal["exact", "semantic"] | None = Field(description="Cache that answered.")
    calibration_version: str | None


class BudgetUsage(BaseModel):
    """A key's budget in the current period (amounts in the currency of the costs)."""

    amount: float = Field(description="What the key may spend per period.")
    period: Literal["hour", "day", "week", "month", "total"]
    period_id: str = Field(description="The current period, e.g. 2026-12-03 for a day.")
    on_exhausted: Literal["refuse", "degrade"]
    spent: float = Field(description="Settled cost of the requests answered this period.")
    reserved: float = Field(description="Worst cases reserved by requests in flight.")
    remaining: float = Field(description="amount - spent - reserved.")
    resets_at: str | None = Field(description="UTC time the period ends (null: never).")
    shared: bool = Field(description="Accounted in Redis, shared by every replica.")


class UsageResponse(BaseModel):
    """The calling key's limits and spend (never the key itself)."""

    key: str = Field(description="The key's name.")
    rights: list[str]
    rate_limit: dict[str, float] | None
    budget: BudgetUsage | None


class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable error type.")
    message: str = Field(description="What is wrong, for humans.")


class ErrorResponse(BaseModel):
    """Every error response has this shape."""

    error: ErrorBody
