"""One exception tree for tiergate.

```
TiergateError                      base; carries a machine-readable ``type``
├── ConfigError                    a config file or artifact is wrong (user fixable)
├── InputError                     a request is invalid (HTTP 422)
│   └── InputTooLargeError         a request exceeds a size limit (HTTP 413)
├── NotReadyError                  models are still loading (HTTP 503)
│   └── DrainingError              this replica is shutting down (HTTP 503 + Retry-After)
├── UnauthorizedError              no API key, or an unknown one (HTTP 401)
├── ForbiddenError                 the key has no right to this route (HTTP 403)
├── NotFoundError                  a named thing (e.g. a request id) is not known (HTTP 404)
├── OverloadError                  admission control shed the request (HTTP 429)
│   └── RateLimitedError           the key's rate limit is spent (HTTP 429)
├── DeadlineExceededError          no tier answered in time, no fallback (HTTP 504)
├── ModelError                     a model adapter failed or returned garbage
│   └── UpstreamError              a remote tier's server failed (status, retry, back-off)
└── CalibrationError               thresholds cannot meet the declared target
```
HTTP mapping lives in :mod:`tiergate.api`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BudgetExceededError",
    "CalibrationError",
    "ConfigError",
    "DeadlineExceededError",
    "DrainingError",
    "ForbiddenError",
    "InputError",
    "InputTooLargeError",
    "ModelError",
    "NotFoundError",
    "NotReadyError",
    "OverloadError",
    "RateLimitedError",
    "TiergateError",
    "UnauthorizedError",
    "UpstreamError",
]


class TiergateError(Exception):
    """Base of every error tiergate raises on purpose."""

    type: str = "tiergate_error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``{"type": ..., "message": ..., **fields}``."""
        return {"type": self.type, "message": self.message, **self.fields}


class ConfigError(TiergateError):
    """A config file, model file or calibration artifact is missing or invalid."""

    type = "config_error"


class InputError(TiergateError):
    """A request body is invalid; the message says what is wrong."""

    type = "invalid_input"


class InputTooLargeError(InputError):
    """A request exceeds a size limit (characters, bytes or batch length)."""

    type = "input_too_large"


class NotReadyError(TiergateError):
    """The service has not finished loading its models."""

    type = "not_ready"


class _RetryAfter(TiergateError):
    """An error whose HTTP answer carries ``Retry-After: retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after_s = retry_after_s


class DrainingError(_RetryAfter, NotReadyError):
    """The replica is draining (SIGTERM): retry on another after ``retry_after_s``."""

    type = "draining"


class OverloadError(_RetryAfter):
    """The request was shed by admission control; retry after ``retry_after_s``."""

    type = "overloaded"


class RateLimitedError(OverloadError):
    """The caller's key spent its rate limit; retry after ``retry_after_s``."""

    type = "rate_limited"


class BudgetExceededError(_RetryAfter):
    """The caller's key cannot cover this request's worst-case cost in this period.

    Answered 402, not 429: a budget is spent, not a rate exceeded, and generic client
    retry loops (which retry 429) must not spin until the period resets. The body names
    the key, its budget and period, what is left and when it resets; ``Retry-After``
    says when that is.
    """

    type = "budget_exceeded"


class UnauthorizedError(TiergateError):
    """No API key, a malformed header or an unknown key (the message never echoes it)."""

    type = "unauthorized"


class ForbiddenError(TiergateError):
    """A valid key without the right to the route it asked for."""

    type = "forbidden"


class NotFoundError(TiergateError):
    """A request names something the service does not know (any more)."""

    type = "not_found"


class DeadlineExceededError(TiergateError):
    """No tier could answer within the deadline and no fallback is configured."""

    type = "deadline_exceeded"


class ModelError(TiergateError):
    """A model adapter raised or returned output that is not a valid distribution."""

    type = "model_error"


class UpstreamError(ModelError):
    """A remote tier's upstream failed; the fields say how the cascade should react.

    ``retryable``: worth another attempt within the retry budget (5xx, a reset
    connection). ``unhealthy``: counts against the tier's circuit breaker (5xx,
    connection refused/reset, timeouts; not a 4xx about this request).
    ``retry_after_s``: the upstream asked not to be called for this long (429, or 503
    with ``Retry-After``): the tier is skipped until then, without retries.
    """

    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        unhealthy: bool = True,
        retry_after_s: float | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, status=status, **fields)
        self.status = status
        self.retryable = retryable
        self.unhealthy = unhealthy
        self.retry_after_s = retry_after_s


class CalibrationError(TiergateError):
    """No thresholds satisfy the declared accuracy target with the declared confidence."""

    type = "calibration_infeasible"
