"""Model adapters: one per model kind, all behind :class:`ModelAdapter`."""

from __future__ import annotations

from tiergate.config import (
    CallableModelConfig,
    MiniLMStackModelConfig,
    ModelConfig,
    OnnxEmbeddingClassifierConfig,
    OpenAIChatModelConfig,
    OpenAICompletionsModelConfig,
    SklearnModelConfig,
    V2InferModelConfig,
)
from tiergate.models.base import (
    AsyncModelAdapter,
    ModelAdapter,
    Probabilities,
    Scored,
    check_probabilities,
    is_async,
)
from tiergate.models.callable import CallableAdapter, import_callable
from tiergate.models.sklearn import SklearnAdapter

__all__ = [
    "AsyncModelAdapter",
    "CallableAdapter",
    "ModelAdapter",
    "Probabilities",
    "Scored",
    "SklearnAdapter",
    "check_probabilities",
    "is_async",
    "load_adapter",
]


def load_adapter(cfg: ModelConfig, *, name: str = "tier") -> ModelAdapter | AsyncModelAdapter:
    """Build the adapter a tier's ``model:`` section describes (``name``: the tier's)."""
    if isinstance(cfg, OpenAIChatModelConfig | OpenAICompletionsModelConfig):
        from tiergate.models.openai import OpenAIClassifier

        return OpenAIClassifier(cfg, name=name)
    if isinstance(cfg, V2InferModelConfig):
        from tiergate.models.v2 import V2InferClassifier

        return V2InferClassifier(cfg, name=name)
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
            parallel_calls=cfg.parallel_calls,
            stack_path=cfg.stack,
        )
    if isinstance(cfg, MiniLMStackModelConfig):
        from tiergate.models.stack import MiniLMStackClassifier

        return MiniLMStackClassifier.from_config(cfg.head, cfg.stack)
    if isinstance(cfg, CallableModelConfig):
        return CallableAdapter(import_callable(cfg.target), cfg.labels)
    raise TypeError(f"unknown model config {type(cfg).__name__}")  # pragma: no cover
