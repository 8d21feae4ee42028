"""The model adapter protocol: every model kind looks the same to the cascade."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from tiergate.errors import ModelError

__all__ = ["ModelAdapter", "Probabilities", "check_probabilities"]

Probabilities = npt.NDArray[np.float64]


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
    if not np.all(np.isfinite(arr)) or np.any(arr < -1e-6):
        raise ModelError(f"model {model!r} returned NaN/inf or negative scores", model=model)
    sums = arr.sum(axis=1)
    if n and not np.allclose(sums, 1.0, atol=1e-3):
        raise ModelError(f"model {model!r} returned rows that do not sum to 1", model=model)
    return arr
