"""``kind: minilm-stack``: a logistic head over the MiniLM embedding, stacked with NB.

The demo's middle tier. Its features are the semantic cache's MiniLM-L3 int8 sentence
embedding (384 numbers) and, optionally, the clipped log-probabilities of another model
over the raw text (the first tier's, so the head learns where that model is wrong). The
embedder is the process's shared one (:func:`tiergate.cache.shared_minilm_embedder`):
with the semantic cache on, the cache's lookup has already embedded the request and this
tier reads the row back instead of running the model again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.errors import ConfigError, ModelError
from tiergate.models.base import Probabilities
from tiergate.models.hashing import combine_digests, file_digest

__all__ = ["MiniLMStackClassifier", "stack_features"]

_CLIP = 1e-6


def stack_features(embeddings: np.ndarray, stack_probs: np.ndarray | None) -> np.ndarray:
    """The head's input: ``[embedding, log(clip(p))]`` (the embedding alone without ``p``).

    The same function builds the training matrix (``tiergate demo build``) and the
    serving one, so the two cannot drift apart.
    """
    if stack_probs is None:
        return np.asarray(embeddings, dtype=np.float64)
    logp = np.log(np.clip(np.asarray(stack_probs, dtype=np.float64), _CLIP, 1.0))
    return np.hstack([np.asarray(embeddings, dtype=np.float64), logp])


def _load(path: Path, what: str) -> Any:
    import joblib

    try:
        obj = joblib.load(path)
    except Exception as exc:  # unpickling can raise almost anything
        raise ConfigError(f"cannot load {what} {path}: {exc}", path=str(path)) from exc
    if not hasattr(obj, "predict_proba") or not hasattr(obj, "classes_"):
        raise ConfigError(
            f"{what} {path} has no predict_proba/classes_ (expected a fitted classifier)",
            path=str(path),
        )
    return obj


def check_stack_labels(
    stack: Any, labels: tuple[str, ...], stack_path: Any, head_path: Any
) -> None:
    """A stacked model must predict the head's labels, in the head's order."""
    stack_labels = tuple(str(c) for c in stack.classes_)
    if stack_labels != labels:
        raise ConfigError(
            f"stacked model {stack_path} has labels {list(stack_labels)}, "
            f"the head {head_path} has {list(labels)}; they must be the same",
            path=str(stack_path),
        )


class MiniLMStackClassifier:
    """``head.predict_proba(stack_features(embed(texts), stack.predict_proba(texts)))``.

    ``embedder`` is anything with ``embed(texts)``, ``sha256`` and ``dim`` (the shared
    :class:`tiergate.cache.MemoEmbedder` when built from config).
    """

    def __init__(self, embedder: Any, head_path: Path, stack_path: Path | None = None) -> None:
        self._embedder = embedder
        self._head = _load(head_path, "classifier head")
        self._stack = None if stack_path is None else _load(stack_path, "stacked model")
        self._labels = tuple(str(c) for c in self._head.classes_)
        if self._stack is not None:
            check_stack_labels(self._stack, self._labels, stack_path, head_path)
        width = embedder.dim + (0 if self._stack is None else len(self._labels))
        n_in = getattr(self._head, "n_features_in_", width)
        if n_in != width:
            raise ConfigError(
                f"classifier head {head_path} takes {n_in} features, but the embedding "
                f"({embedder.dim}){' plus the stacked log-probabilities' if self._stack else ''}"
                f" gives {width}",
                path=str(head_path),
            )
        digests = [embedder.sha256, file_digest(head_path, length=64)]
        if stack_path is not None:
            digests.append(file_digest(stack_path, length=64))
        self._version = combine_digests(*digests)
        self._name = head_path.name
        # Does every request's embedding come from the semantic cache anyway? (pricing)
        self.embedding_shared = False

    @classmethod
    def from_config(cls, head: Path, stack: Path | None) -> MiniLMStackClassifier:
        from tiergate.cache import shared_minilm_embedder
        from tiergate.config import tiergate_home

        return cls(shared_minilm_embedder(tiergate_home() / "minilm"), head, stack)

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def version(self) -> str:
        return self._version

    @property
    def embedder(self) -> Any:
        return self._embedder

    def predict_batch(self, texts: Sequence[str]) -> Probabilities:
        if len(texts) == 0:
            return np.zeros((0, len(self._labels)), dtype=np.float64)
        return self._predict(texts, self._embedder.embed(texts))

    def cost_probe(self, texts: Sequence[str]) -> Probabilities:
        """One call as it costs in service, for start-up pricing.

        With :attr:`embedding_shared` (the service sets it when the semantic cache is on
        and embeds every request anyway) the embedding is free to this tier: the row is
        already remembered. Otherwise the embedding is part of the price, so the probe
        runs the model even for a text the memo holds.
        """
        embed = getattr(self._embedder, "inner", self._embedder).embed
        emb = self._embedder.embed(texts) if self.embedding_shared else embed(texts)
        return self._predict(texts, emb)

    def _predict(self, texts: Sequence[str], emb: np.ndarray) -> Probabilities:
        try:
            p = None if self._stack is None else self._stack.predict_proba(list(texts))
            probs = self._head.predict_proba(stack_features(emb, p))
        except Exception as exc:  # sklearn raises many types; all mean the model failed
            raise ModelError(
                f"classifier head {self._name} failed: {exc}", model=self._name
            ) from exc
        out: Probabilities = np.asarray(probs, dtype=np.float64)
        return out
