"""The model adapter protocol: every model kind looks the same to the cascade."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from tiergate.errors import ModelError

__all__ = [
    "AsyncModelAdapter",
    "ModelAdapter",
    "Probabilities",
    "Scored",
    "check_probabilities",
    "is_async",
]

Probabilities = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Scored:
    """A model call's rows: probabilities and, for metered (token-priced) tiers, costs.

    ``costs`` holds each row's cost in currency units and ``tokens`` each row's
    ``(prompt, completion)`` token counts; both are ``None`` for tiers priced per call.
    Slicing (``scored[a:b]``) slices every field, as the micro-batcher does per request.
    """

    probs: Probabilities
    costs: npt.NDArray[np.float64] | None = None
    tokens: npt.NDArray[np.int64] | None = None

    def __getitem__(self, index: slice, /) -> Scored:
        return Scored(
            self.probs[index],
            None if self.costs is None else self.costs[index],
            None if self.tokens is None else self.tokens[index],
        )

    def __len__(self) -> int:
        return len(self.probs)


@runtime_checkable
class ModelAdapter(Protocol):
    """A classifier over text.

    ``predict_batch(texts)`` returns an ``(len(texts), len(labels))`` array of class
    probabilities, rows summing to 1, columns ordered as ``labels``.
    ``version`` identifies the exact weights (a content hash), so caches and
    calibration artifacts can tell models apart.
    """

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def version(self) -> str: ...

    def predict_batch(self, texts: Sequence[str]) -> Probabilities: ...


@runtime_checkable
class AsyncModelAdapter(Protocol):
    """A classifier whose calls are I/O (a remote model server or LLM API).

    ``apredict_batch`` is awaited on the event loop (no thread per call) and returns
    :class:`Scored` rows; ``start()`` checks the upstream is ready (and raises a typed
    error saying why not) before the service takes traffic; ``aclose()`` releases the
    connection pool. ``status()`` is what ``/readyz`` shows of the upstream.
    """

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def version(self) -> str: ...

    async def apredict_batch(self, texts: Sequence[str]) -> Scored: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def status(self) -> dict[str, object]: ...


def is_async(adapter: object) -> bool:
    """Whether ``adapter`` is awaited (remote) rather than called in a thread."""
    return callable(getattr(adapter, "apredict_batch", None))


def check_probabilities(probs: object, n: int, k: int, model: str) -> Probabilities:
    """Validate an adapter's output; raise :class:`ModelError` on garbage.

    A model that returns the wrong shape, NaN, negative values or rows that do not
    sum to one must not be turned into a confident answer.
    """
    try:
        arr = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {model!r} returned non-numeric output", model=model) from exc
    if arr.shape != (n, k):
        raise ModelError(
            f"model {model!r} returned shape {arr.shape}, expected {(n, k)}", model=model
        )
    # Plain reductions, not np.allclose: this runs on every model call, and allclose's
    # generality costs more than the check itself on a row or two.
    if not np.isfinite(arr).all() or (arr < -1e-6).any():
        raise ModelError(f"model {model!r} returned NaN/inf or negative scores", model=model)
    if n and float(np.abs(arr.sum(axis=1) - 1.0).max()) > 1e-3:
        raise ModelError(f"model {model!r} returned rows that do not sum to 1", model=model)
    return arr
