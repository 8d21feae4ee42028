"""Admission control: a bound on requests in flight; beyond it, shed at once (429)."""

from __future__ import annotations

from tiergate.errors import OverloadError

__all__ = ["Admission"]


class Admission:
    """Counts requests in flight and refuses new ones past ``max_inflight``.

    Refusing early is what keeps admitted requests within their deadlines: queueing
    without a bound only turns overload into timeouts for everyone.
    """

    def __init__(self, max_inflight: int, retry_after_s: float = 1.0) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self.shed = 0

    def __repr__(self) -> str:
        return f"Admission(max_inflight={self.max_inflight})"

    def acquire(self, weight: int = 1) -> None:
        """Admit a request of ``weight`` inputs or raise :class:`OverloadError`."""
        if self.inflight + weight > self.max_inflight and self.inflight > 0:
            self.shed += 1
            raise OverloadError(
                f"{self.inflight} inputs in flight (limit {self.max_inflight}); retry later",
                retry_after_s=self.retry_after_s,
            )
        self.inflight += weight

    def release(self, weight: int = 1) -> None:
        self.inflight -= weight
