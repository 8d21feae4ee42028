"""scikit-learn pipelines (anything with ``predict_proba``) saved with joblib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.errors import ConfigError
from tiergate.models.base import Probabilities
from tiergate.models.hashing import file_digest

__all__ = ["SklearnAdapter"]


class SklearnAdapter:
    """Wraps a fitted estimator whose ``predict_proba`` takes raw texts.

    >>> adapter = SklearnAdapter.load(Path("fast.joblib"))  # doctest: +SKIP
    >>> adapter.predict_batch(["a gorgeous, moving film"])  # doctest: +SKIP
    """

    def __init__(self, estimator: Any, version: str) -> None:
        if not hasattr(estimator, "predict_proba") or not hasattr(estimator, "classes_"):
            raise ConfigError("estimator needs predict_proba and classes_ (a fitted classifier)")
        self._estimator = estimator
        self._labels = tuple(str(c) for c in estimator.classes_)
        self._version = version

    @classmethod
    def load(cls, path: Path) -> SklearnAdapter:
        """Load a joblib file; the version is a hash of its bytes."""
        import joblib

        try:
            estimator = joblib.load(path)
        except Exception as exc:  # joblib raises many kinds on a bad file
            raise ConfigError(f"cannot load scikit-learn model {path}: {exc}") from exc
        return cls(estimator, file_digest(path))

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def version(self) -> str:
        return self._version

    def predict_batch(self, texts: Sequence[str]) -> Probabilities:
        return np.asarray(self._estimator.predict_proba(list(texts)), dtype=np.float64)
