"""ONNX sentence embeddings (onnxruntime + tokenizers) and a classifier head on top.

Serve-time code: imports only numpy, onnxruntime, tokenizers and joblib — no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from tiergate.errors import ConfigError, ModelError
from tiergate.models.base import Probabilities
from tiergate.models.hashing import combine_digests, file_digest

__all__ = ["Embeddings", "OnnxEmbeddingClassifier", "OnnxSentenceEmbedder"]

Embeddings = npt.NDArray[np.float32]

# Pad tokens tried, in order, when tokenizer.json carries no padding config of its own.
_PAD_TOKENS = ("<pad>", "[PAD]", "<|padding|>")
_ONNX_INT_TYPES: dict[str, type[np.signedinteger[Any]]] = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}", path=str(path))
    return path


# Cost of one model call, in padded tokens: a fixed part worth ~24 tokens plus one per
# padded token. Fitted on a 2-core machine from batch-1 and length-sorted batch-32 rates
# of MPNet (fp32: ~20 tokens, int8: ~26); the grouping is not sensitive to its exact value.
CALL_OVERHEAD_TOKENS = 24.0


def _length_groups(
    lengths: npt.NDArray[np.int64], *, call_tokens: float = CALL_OVERHEAD_TOKENS
) -> list[npt.NDArray[np.intp]]:
    """Split a batch into model calls of similar token length, minimising modelled cost.

    Each call costs ``call_tokens + size × longest`` (everything is padded to the longest
    text in the call). With texts sorted by length the best split into contiguous runs is
    an exact dynamic programme: ``best[j] = min_i best[i] + call_tokens + (j-i)·len[j-1]``.
    """
    order = np.argsort(lengths, kind="stable")
    srt = lengths[order].astype(np.float64)
    n = len(srt)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.intp)
    for j in range(1, n + 1):
        starts = np.arange(j)
        costs = best[:j] + call_tokens + (j - starts) * srt[j - 1]
        cut[j] = int(np.argmin(costs))
        best[j] = costs[cut[j]]
    groups: list[npt.NDArray[np.intp]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j].astype(np.intp))
        j = int(cut[j])
    return groups[::-1]


class OnnxSentenceEmbedder:
    """Sentence embeddings from an ONNX transformer: mean pooling + L2 normalisation.

    The model must take ``input_ids`` / ``attention_mask`` (optionally ``token_type_ids``)
    and return token embeddings ``(batch, seq, dim)`` as its first output (or one named
    ``last_hidden_state`` / ``token_embeddings``). Thread-safe: the session and the
    tokenizer are read-only after construction.

    Batch-invariant models (fp32, statically quantised) run a batch as a few calls of
    texts of similar length (see ``_length_groups``): padding a random batch to its
    longest text wastes about half of the work, and grouping recovers it (MPNet fp32 on
    2 cores: 46 → 78 texts/s for random batches of 32, ``bench/batching_ceiling.py``).

    Dynamically quantised (int8) models are batch-dependent: activations share one
    quantisation scale per call, so a text's embedding would change with its batch-mates
    (for the demo's smoothed MPNet, cosine to itself as low as 0.95). The constructor
    detects this and then runs each text alone (``row_by_row``): results become
    batch-invariant, which caches and reproducibility need. Pass ``row_by_row`` to skip
    the detection.

    >>> emb = OnnxSentenceEmbedder(Path("mpnet-int8.onnx"), Path("tokenizer.json"))
    >>> emb.embed(["a fine film"]).shape  # doctest: +SKIP
    (1, 768)
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        *,
        max_length: int = 128,
        intra_op_threads: int | None = None,
        row_by_row: bool | None = None,
        parallel_calls: int | None = None,
    ) -> None:
        self._model_path = _require_file(model_path, "ONNX model")
        self._tokenizer_path = _require_file(tokenizer_path, "tokenizer")
        if max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {max_length}", max_length=max_length)
        self._max_length = max_length
        self._sha256 = file_digest(self._model_path, length=64)

        cpus = os.cpu_count() or 1
        # Probed with the row-by-row layout (1 thread per call) unless told otherwise; a
        # batch-invariant model then gets a session with every core in one call instead.
        self._intra = intra_op_threads or (1 if row_by_row is not False else cpus)
        self._session = self._new_session(self._intra)
        self._inputs: dict[str, type[np.signedinteger[Any]]] = {}
        for inp in self._session.get_inputs():
            if inp.name not in ("input_ids", "attention_mask", "token_type_ids"):
                raise ConfigError(
                    f"ONNX model {self._model_path} has unsupported input {inp.name!r}",
                    path=str(self._model_path),
                )
            self._inputs[inp.name] = _ONNX_INT_TYPES.get(inp.type, np.int64)
        if "input_ids" not in self._inputs:
            raise ConfigError(
                f"ONNX model {self._model_path} has no 'input_ids' input",
                path=str(self._model_path),
            )
        outputs = [o.name for o in self._session.get_outputs()]
        named = [n for n in outputs if n in ("token_embeddings", "last_hidden_state")]
        self._output = named[0] if named else outputs[0]

        try:
            self._tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ConfigError(
                f"cannot load tokenizer {self._tokenizer_path}: {exc}",
                path=str(self._tokenizer_path),
            ) from exc
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding(**self._padding_args())

        # Probing also warms the session up, so the first request is not slow.
        self._row_by_row = self._batch_dependent() if row_by_row is None else row_by_row
        if intra_op_threads is None and not self._row_by_row and self._intra != cpus:
            self._intra = cpus
            self._session = self._new_session(cpus)
        if parallel_calls is None:
            parallel_calls = max(1, cpus // self._intra) if self._row_by_row else 1
        if parallel_calls < 1:
            raise ConfigError(f"parallel_calls must be >= 1, got {parallel_calls}")
        self._parallel = parallel_calls
        self._pool = (
            ThreadPoolExecutor(parallel_calls, thread_name_prefix="tiergate-onnx")
            if parallel_calls > 1
            else None
        )
        self._dim = int(self.embed([""]).shape[1])

    def _new_session(self, intra_op_threads: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads must sleep, not spin: on a small machine spinning threads
        # starve the event loop and the fast tier between calls.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(
                str(self._model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ConfigError(
                f"cannot load ONNX model {self._model_path}: {exc}", path=str(self._model_path)
            ) from exc

    @property
    def intra_op_threads(self) -> int:
        """onnxruntime threads inside one call."""
        return self._intra

    @property
    def parallel_calls(self) -> int:
        """Calls of one batch run at once."""
        return self._parallel

    def _padding_args(self) -> dict[str, Any]:
        current = self._tokenizer.padding
        if current is not None:
            return {"pad_id": current["pad_id"], "pad_token": current["pad_token"]}
        for token in _PAD_TOKENS:
            pad_id = self._tokenizer.token_to_id(token)
            if pad_id is not None:
                return {"pad_id": pad_id, "pad_token": token}
        return {"pad_id": 0, "pad_token": "[PAD]"}  # masked out anyway

    @property
    def version(self) -> str:
        """First 16 hex digits of the model file's sha256."""
        return self._sha256[:16]

    @property
    def sha256(self) -> str:
        """Full sha256 of the model file."""
        return self._sha256

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._dim

    @property
    def max_length(self) -> int:
        """Token limit; longer texts are truncated."""
        return self._max_length

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts after truncation (useful to sort a corpus into tight batches)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        return [sum(e.attention_mask) for e in encodings]

    @property
    def row_by_row(self) -> bool:
        """Whether batches run one text at a time (see the class docstring)."""
        return self._row_by_row

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Embed ``texts`` into an ``(n, dim)`` float32 array of unit vectors."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        if len(texts) == 0:
            return np.zeros((0, getattr(self, "_dim", 0)), dtype=np.float32)
        ids, mask = self._encode(texts)
        if len(texts) == 1:
            return self._run(ids, mask)
        lengths = mask.sum(axis=1)
        if self._row_by_row:
            rows = [np.array([i], dtype=np.intp) for i in range(len(texts))]
            return self._run_calls(ids, mask, lengths, rows)
        # Padding every text to the batch's longest wastes most of a random batch's work
        # (short texts dominate): run groups of similar length instead, in input order.
        return self._run_calls(ids, mask, lengths, _length_groups(lengths))

    def _run_calls(
        self,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        calls: list[npt.NDArray[np.intp]],
    ) -> Embeddings:
        def one(idx: npt.NDArray[np.intp]) -> Embeddings:
            n = int(lengths[idx].max())
            return self._run(ids[idx, :n], mask[idx, :n])

        if self._pool is None or len(calls) == 1:
            parts = [one(idx) for idx in calls]
        else:
            parts = list(self._pool.map(one, calls))
        out: Embeddings = np.empty((len(ids), parts[0].shape[1]), dtype=np.float32)
        for idx, emb in zip(calls, parts, strict=True):
            out[idx] = emb
        return out

    def _encode(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def _run(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> Embeddings:
        feeds: dict[str, npt.NDArray[Any]] = {}
        for name, dtype in self._inputs.items():
            if name == "input_ids":
                feeds[name] = ids.astype(dtype, copy=False)
            elif name == "attention_mask":
                feeds[name] = mask.astype(dtype, copy=False)
            else:
                feeds[name] = np.zeros_like(ids, dtype=dtype)
        try:
            (tokens,) = self._session.run([self._output], feeds)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(
                f"ONNX model {self._model_path.name} failed: {exc}", model=self._model_path.name
            ) from exc
        tokens = np.asarray(tokens, dtype=np.float32)
        if tokens.ndim != 3 or tokens.shape[:2] != ids.shape:
            raise ModelError(
                f"ONNX model {self._model_path.name} returned shape {tokens.shape}, "
                f"expected (batch, seq, dim) for input {ids.shape}",
                model=self._model_path.name,
            )
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: Embeddings = (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return out

    def _batch_dependent(self) -> bool:
        # Dynamic int8 quantisation picks one activation scale per tensor, i.e. per
        # batch: a text's embedding then depends on its batch-mates and their padding.
        probe = ["a short probe", "a much longer probe sentence, which pads the first one out"]
        together = self._run(*self._encode(probe))[0]  # one padded batch, on purpose
        alone = self._run(*self._encode(probe[:1]))[0]
        return not np.allclose(together, alone, atol=1e-5)


class OnnxEmbeddingClassifier:
    """A :class:`~tiergate.models.base.ModelAdapter`: ONNX sentence embeddings + a
    scikit-learn classifier head (anything with ``predict_proba`` and ``classes_``)
    saved with joblib.

    With ``stack_path`` (a joblib pipeline over raw texts, e.g. the first tier's model) the
    head reads ``[embedding, log p(stack)]`` (:func:`~tiergate.models.stack.stack_features`),
    so it can learn where that model is right and where the embedding knows better.
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        head_path: Path,
        *,
        max_length: int = 128,
        intra_op_threads: int | None = None,
        row_by_row: bool | None = None,
        parallel_calls: int | None = None,
        stack_path: Path | None = None,
    ) -> None:
        head_path = _require_file(head_path, "classifier head")
        self._embedder = OnnxSentenceEmbedder(
            model_path,
            tokenizer_path,
            max_length=max_length,
            intra_op_threads=intra_op_threads,
            row_by_row=row_by_row,
            parallel_calls=parallel_calls,
        )
        try:
            head = joblib.load(head_path)
        except Exception as exc:  # unpickling can raise almost anything
            raise ConfigError(
                f"cannot load classifier head {head_path}: {exc}", path=str(head_path)
            ) from exc
        if not hasattr(head, "predict_proba") or not hasattr(head, "classes_"):
            raise ConfigError(
                f"classifier head {head_path} has no predict_proba/classes_ "
                "(expected a fitted scikit-learn classifier)",
                path=str(head_path),
            )
        self._head = head
        self._labels = tuple(str(c) for c in head.classes_)
        self._stack: Any = None
        digests = [self._embedder.sha256, file_digest(head_path, length=64)]
        if stack_path is not None:
            from tiergate.models.stack import _load, check_stack_labels

            self._stack = _load(_require_file(stack_path, "stacked model"), "stacked model")
            check_stack_labels(self._stack, self._labels, stack_path, head_path)
            digests.append(file_digest(stack_path, length=64))
        width = self._embedder.dim + (0 if self._stack is None else len(self._labels))
        n_in = getattr(head, "n_features_in_", width)
        if n_in != width:
            raise ConfigError(
                f"classifier head {head_path} takes {n_in} features, but the embedding "
                f"({self._embedder.dim})"
                f"{' plus the stacked log-probabilities' if self._stack is not None else ''}"
                f" gives {width}",
                path=str(head_path),
            )
        self._version = combine_digests(*digests)
        self._name = head_path.name

    @property
    def labels(self) -> tuple[str, ...]:
        """Class labels, in the order of ``predict_batch`` columns."""
        return self._labels

    @property
    def version(self) -> str:
        """16 hex digits identifying the ONNX model and the head together."""
        return self._version

    @property
    def embedder(self) -> OnnxSentenceEmbedder:
        """The underlying embedder (e.g. for a semantic cache that shares it)."""
        return self._embedder

    def predict_batch(self, texts: Sequence[str]) -> Probabilities:
        """Class probabilities, shape ``(len(texts), len(labels))``, float64."""
        if len(texts) == 0:
            return np.zeros((0, len(self._labels)), dtype=np.float64)
        return self.predict_embeddings(self._embedder.embed(texts), texts)

    def predict_embeddings(
        self, embeddings: Embeddings, texts: Sequence[str] | None = None
    ) -> Probabilities:
        """Class probabilities for precomputed embeddings from :attr:`embedder` (``texts``:
        the inputs they embed, needed when the head is stacked)."""
        try:
            x: Any = embeddings
            if self._stack is not None:
                if texts is None:
                    raise ValueError("a stacked head needs the texts as well as the embeddings")
                from tiergate.models.stack import stack_features

                x = stack_features(embeddings, self._stack.predict_proba(list(texts)))
            probs = self._head.predict_proba(x)
        except Exception as exc:  # sklearn raises many types; all mean the head failed
            raise ModelError(
                f"classifier head {self._name} failed: {exc}", model=self._name
            ) from exc
        out: Probabilities = np.asarray(probs, dtype=np.float64)
        return out
