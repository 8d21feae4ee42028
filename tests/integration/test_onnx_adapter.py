"""The ONNX embedder and classifier on the real demo artifacts (MPNet int8)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tiergate.errors import ConfigError
from tiergate.models.base import ModelAdapter, check_probabilities
from tiergate.models.onnx import OnnxEmbeddingClassifier, OnnxSentenceEmbedder

pytestmark = pytest.mark.integration

TEXTS = [
    "An absolute triumph: moving, funny and beautifully acted.",
    "A tedious, incoherent mess that wastes a talented cast.",
    "ok",
    "The second half drags, though the score is lovely and the leads have real chemistry.",
]
POSITIVE = [
    "A masterpiece. One of the best films I have seen in years.",
    "Wonderful, warm and wise; I loved every minute of it.",
    "Brilliant performances and a gripping, beautifully written story.",
]
NEGATIVE = [
    "A boring, stupid film. Avoid it.",
    "Dreadful acting, a lazy script and no laughs at all.",
    "The worst movie of the year: painfully dull and utterly pointless.",
]


@pytest.fixture(scope="module")
def embedder(demo_dir: Path) -> Iterator[OnnxSentenceEmbedder]:
    yield OnnxSentenceEmbedder(demo_dir / "mpnet-int8.onnx", demo_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def classifier(demo_dir: Path) -> Iterator[OnnxEmbeddingClassifier]:
    yield OnnxEmbeddingClassifier(
        demo_dir / "mpnet-int8.onnx", demo_dir / "tokenizer.json", demo_dir / "accurate-head.joblib"
    )


def test_embeddings_are_unit_vectors(embedder: OnnxSentenceEmbedder) -> None:
    emb = embedder.embed(TEXTS)
    assert emb.dtype == np.float32
    assert emb.shape == (len(TEXTS), embedder.dim) == (len(TEXTS), 768)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_embeddings_are_deterministic(embedder: OnnxSentenceEmbedder) -> None:
    np.testing.assert_array_equal(embedder.embed(TEXTS), embedder.embed(TEXTS))


def test_batch_matches_single(embedder: OnnxSentenceEmbedder) -> None:
    # Batch-mates and padding must not change any embedding.
    batch = embedder.embed(TEXTS)
    singles = np.vstack([embedder.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-4)
    np.testing.assert_allclose(embedder.embed(TEXTS[::-1])[::-1], batch, atol=1e-4)


def _int8_fallback(demo_dir: Path) -> str | None:
    import json

    export = json.loads((demo_dir / "manifest.json").read_text())["export"]
    return export.get("int8_fallback")  # type: ignore[no-any-return]


def test_int8_runs_row_by_row_fp32_batches(embedder: OnnxSentenceEmbedder, demo_dir: Path) -> None:
    # Dynamic int8 quantisation is batch-dependent, so the embedder detects it and runs
    # texts one at a time; the fp32 model is batch-invariant and keeps real batches.
    if (why := _int8_fallback(demo_dir)) is not None:
        pytest.skip(f"this build serves fp32 for the accurate tier ({why})")
    assert embedder.row_by_row
    fp32 = OnnxSentenceEmbedder(demo_dir / "mpnet-fp32.onnx", demo_dir / "tokenizer.json")
    assert not fp32.row_by_row
    batch = fp32.embed(TEXTS)
    singles = np.vstack([fp32.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-4)
    cos = (batch * embedder.embed(TEXTS)).sum(axis=1)
    assert np.all(cos > 0.9) and cos.mean() > 0.97  # smoothed int8 stays close to fp32


def test_thread_layout_follows_the_model(embedder: OnnxSentenceEmbedder, demo_dir: Path) -> None:
    # One text per call (dynamic int8): one intra-op thread per call, one call per core.
    # Batch-invariant fp32: every core inside one call, one call at a time.
    if (why := _int8_fallback(demo_dir)) is not None:
        pytest.skip(f"this build serves fp32 for the accurate tier ({why})")
    cpus = os.cpu_count() or 1
    assert (embedder.intra_op_threads, embedder.parallel_calls) == (1, cpus)
    fp32 = OnnxSentenceEmbedder(demo_dir / "mpnet-fp32.onnx", demo_dir / "tokenizer.json")
    assert (fp32.intra_op_threads, fp32.parallel_calls) == (cpus, 1)
    pinned = OnnxSentenceEmbedder(
        demo_dir / "mpnet-int8.onnx", demo_dir / "tokenizer.json", intra_op_threads=2
    )
    assert (pinned.intra_op_threads, pinned.parallel_calls) == (2, max(1, cpus // 2))


def test_parallel_calls_give_the_serial_answer(
    embedder: OnnxSentenceEmbedder, demo_dir: Path
) -> None:
    # Calls run on the embedder's threads and land in input order, bit for bit.
    serial = OnnxSentenceEmbedder(
        demo_dir / "mpnet-int8.onnx", demo_dir / "tokenizer.json", intra_op_threads=1,
        parallel_calls=1,
    )  # fmt: skip
    wide = OnnxSentenceEmbedder(
        demo_dir / "mpnet-int8.onnx", demo_dir / "tokenizer.json", intra_op_threads=1,
        parallel_calls=3,
    )  # fmt: skip
    texts = [*TEXTS, *POSITIVE, *NEGATIVE]
    assert wide.parallel_calls == 3 and serial.parallel_calls == 1
    np.testing.assert_array_equal(wide.embed(texts), serial.embed(texts))
    np.testing.assert_array_equal(wide.embed(texts[::-1])[::-1], serial.embed(texts))
    with pytest.raises(ConfigError, match="parallel_calls"):
        OnnxSentenceEmbedder(
            demo_dir / "mpnet-int8.onnx", demo_dir / "tokenizer.json", parallel_calls=0
        )


def test_long_text_is_truncated(embedder: OnnxSentenceEmbedder) -> None:
    long = " ".join(["a sprawling, ambitious, occasionally thrilling epic"] * 200)
    assert embedder.token_lengths([long]) == [embedder.max_length]
    emb = embedder.embed([long, "short"])
    assert emb.shape == (2, embedder.dim)
    assert np.all(np.isfinite(emb))
    # Everything past max_length is ignored.
    np.testing.assert_allclose(emb[0], embedder.embed([long + " but terrible"])[0], atol=1e-5)


def test_empty_inputs(embedder: OnnxSentenceEmbedder) -> None:
    assert embedder.embed([]).shape == (0, embedder.dim)
    emb = embedder.embed(["", "   ", "fine"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_embed_rejects_a_bare_string(embedder: OnnxSentenceEmbedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_version_is_a_content_hash(embedder: OnnxSentenceEmbedder, demo_dir: Path) -> None:
    from tiergate.models.hashing import file_digest

    assert embedder.version == file_digest(demo_dir / "mpnet-int8.onnx")
    assert len(embedder.version) == 16


def test_classifier_is_a_model_adapter(classifier: OnnxEmbeddingClassifier) -> None:
    assert isinstance(classifier, ModelAdapter)
    assert classifier.labels == ("negative", "positive")
    assert len(classifier.version) == 16
    assert classifier.version != classifier.embedder.version


def test_classifier_probabilities_are_valid(classifier: OnnxEmbeddingClassifier) -> None:
    texts = [*TEXTS, "", "x" * 5000]
    probs = classifier.predict_batch(texts)
    assert probs.dtype == np.float64
    check_probabilities(probs, len(texts), 2, "accurate")
    assert classifier.predict_batch([]).shape == (0, 2)


def test_classifier_sanity(classifier: OnnxEmbeddingClassifier) -> None:
    pos = classifier.labels.index("positive")
    assert np.all(classifier.predict_batch(POSITIVE)[:, pos] > 0.8)
    assert np.all(classifier.predict_batch(NEGATIVE)[:, pos] < 0.2)


def test_missing_files_name_the_file(demo_dir: Path, tmp_path: Path) -> None:
    tok, model = demo_dir / "tokenizer.json", demo_dir / "mpnet-int8.onnx"
    with pytest.raises(ConfigError, match=r"nope\.onnx"):
        OnnxSentenceEmbedder(tmp_path / "nope.onnx", tok)
    with pytest.raises(ConfigError, match=r"nope\.json"):
        OnnxSentenceEmbedder(model, tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=r"nope\.joblib"):
        OnnxEmbeddingClassifier(model, tok, tmp_path / "nope.joblib")


def test_invalid_files_are_config_errors(demo_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"junk\.onnx"):
        OnnxSentenceEmbedder(junk, demo_dir / "tokenizer.json")
    head = tmp_path / "head.joblib"
    head.write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match=r"head\.joblib"):
        OnnxEmbeddingClassifier(demo_dir / "mpnet-int8.onnx", demo_dir / "tokenizer.json", head)


def test_manifest_records_the_build(demo_dir: Path) -> None:
    import json

    manifest = json.loads((demo_dir / "manifest.json").read_text())
    assert manifest["data"]["sizes"]["test"] > 3000
    assert manifest["tiers"]["fast"]["test_accuracy"] >= 0.76
    assert manifest["tiers"]["accurate"]["test_accuracy"] >= 0.84
    assert manifest["export"]["fp32_vs_st_min_cosine"] > 0.999
    assert manifest["export"]["smoothing"]["matmuls"] == 12  # MPNet's FFN down-projections
    if manifest["export"].get("int8_fallback") is None:
        assert manifest["export"]["int8_vs_fp32_mean_cosine"] > 0.97
    else:  # the build refused a broken int8 model and says why
        assert manifest["export"]["int8_vs_fp32_mean_cosine"] < 0.95


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("torch") is None,
    reason="needs tiergate[build] (torch, sentence-transformers)",
)
def test_fp32_export_matches_sentence_transformers(demo_dir: Path, tmp_path: Path) -> None:
    from tiergate.demo.export import assemble_mpnet, load_sentence_transformer, verify_onnx

    st_model = load_sentence_transformer(assemble_mpnet(tmp_path / "work"))
    assert st_model.max_seq_length == 384
    cosine = verify_onnx(st_model, demo_dir / "mpnet-fp32.onnx", demo_dir / "tokenizer.json")
    assert cosine > 0.999
