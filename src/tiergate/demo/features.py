"""NB-weighted bag of n-grams (Wang & Manning, 2012) for the demo's fast tier.

Binary uni+bigram counts scaled by the naive-Bayes log-count ratio, then logistic
regression: a classic strong baseline for short sentiment snippets that is as cheap
as TF-IDF at serve time. Lives in the package (not the build script) because the
pickled pipeline refers to it when `serve` loads ``fast.joblib``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["NBLogCountRatio"]


class NBLogCountRatio(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Scale binary features by ``r = log((p/|p|₁) / (q/|q|₁))`` (binary labels only).

    ``p``/``q`` are the smoothed feature counts of the second/first class in
    ``classes_`` order (sorted labels), with smoothing ``alpha``.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, x: Any, y: Any) -> NBLogCountRatio:
        y = np.asarray(y)
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError("NBLogCountRatio needs exactly two classes")
        x = sparse.csr_matrix(x)
        p = self.alpha + np.asarray(x[y == classes[1]].sum(axis=0)).ravel()
        q = self.alpha + np.asarray(x[y == classes[0]].sum(axis=0)).ravel()
        self.r_: npt.NDArray[np.float64] = np.log((p / p.sum()) / (q / q.sum()))
        self.classes_ = classes
        return self

    def transform(self, x: Any) -> sparse.csr_matrix:
        return sparse.csr_matrix(x).multiply(self.r_).tocsr()
