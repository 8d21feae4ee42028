"""Model adapters: one per model kind, all behind :class:`ModelAdapter`."""

from __future__ import annotations

from tiergate.config import (
    CallableModelConfig,
    ModelConfig,
    OnnxEmbeddingClassifierConfig,
    SklearnModelConfig,
)
from tiergate.models.base import ModelAdapter, Probabilities, check_probabilities
from tiergate.models.callable import CallableAdapter, import_callable
from tiergate.models.sklearn import SklearnAdapter

__all__ = [
    "CallableAdapter",
    "ModelAdapter",
    "Probabilities",
    "SklearnAdapter",
    "check_probabilities",
    "load_adapter",
]


def load_adapter(cfg: ModelConfig) -> ModelAdapter:
    """Build the adapter a tier's ``model:`` section describes."""
    if isinstance(cfg, SklearnModelConfig):
        return SklearnAdapter.load(cfg.path)
    if isinstance(cfg, OnnxEmbeddingClassifierConfig):
        from tiergate.models.onnx import OnnxEmbeddingClassifier

        return OnnxEmbeddingClassifier(
            cfg.path,
            cfg.tokenizer,
            cfg.head,
            max_length=cfg.max_length,
            intra_op_threads=cfg.intra_op_threads,
        )
    if isinstance(cfg, CallableModelConfig):
        return CallableAdapter(import_callable(cfg.target), cfg.labels)
    raise TypeError(f"unknown model config {type(cfg).__name__}")  # pragma: no cover
