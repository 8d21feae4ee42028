"""Plain Python callables as models: for users' own code and for tests."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tiergate.errors import ConfigError
from tiergate.models.base import Probabilities

__all__ = ["CallableAdapter", "import_callable"]


class CallableAdapter:
    """Adapts ``fn(texts) -> probabilities`` (rows over ``labels``) to the protocol.

    >>> adapter = CallableAdapter(lambda xs: [[0.2, 0.8] for _ in xs], ("neg", "pos"))
    >>> adapter.predict_batch(["ok"]).tolist()
    [[0.2, 0.8]]
    """

    def __init__(
        self,
        fn: Callable[[Sequence[str]], Any],
        labels: Sequence[str],
        version: str | None = None,
    ) -> None:
        if len(labels) < 2:
            raise ConfigError("a classifier needs at least two labels")
        self._fn = fn
        self._labels = tuple(labels)
        name = getattr(fn, "__qualname__", type(fn).__name__)
        self._version = version or hashlib.sha256(name.encode()).hexdigest()[:16]

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def version(self) -> str:
        return self._version

    def predict_batch(self, texts: Sequence[str]) -> Probabilities:
        # Validation of shape/range happens in the tier, for every adapter alike.
        return np.asarray(self._fn(list(texts)), dtype=np.float64)


def import_callable(target: str) -> Callable[[Sequence[str]], Any]:
    """Import ``package.module:attr`` and check it is callable."""
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import callable {target!r}: {exc}") from exc
    if not callable(obj):
        raise ConfigError(f"{target!r} is not callable")
    return obj  # type: ignore[no-any-return]
