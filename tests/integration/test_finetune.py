"""The three-tier demo's middle tier: all-MiniLM-L6-v2 fine-tuned, exported, served as is.

Real parts: the packaged all-MiniLM-L6-v2 checkpoint, torch on the CPU, the ONNX export and
onnxruntime. A short fine-tune (one epoch on 96 demo texts) keeps it to seconds; what is
checked is that what serving runs is what was trained, not how accurate it gets (the build
records that).
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

pytest.importorskip("torch", reason="needs tiergate[build] (torch, sentence-transformers)")

from tiergate.demo.data import read_jsonl
from tiergate.demo.export import export_onnx
from tiergate.demo.finetune import FineTuneRecipe, finetune_minilm, head_from_linear
from tiergate.models.onnx import OnnxEmbeddingClassifier


def test_head_from_linear_is_the_softmax_of_the_linear_layer() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    for k in (2, 3):
        w, b = rng.normal(size=(k, 5)), rng.normal(size=k)
        logits = x @ w.T + b
        want = np.exp(logits - logits.max(1, keepdims=True))
        want /= want.sum(1, keepdims=True)
        head = head_from_linear(w, b, [f"c{i}" for i in range(k)])
        np.testing.assert_allclose(head.predict_proba(x), want, rtol=1e-9, atol=1e-12)
        assert list(head.classes_) == [f"c{i}" for i in range(k)]


def test_the_served_onnx_tier_answers_as_the_fine_tuned_model(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiergate.demo.finetune import minilm_l6_dir

    texts, labels = read_jsonl(demo_dir / "data" / "train.jsonl")
    texts, labels = texts[:96], labels[:96]
    monkeypatch.setattr(FineTuneRecipe, "epochs", 1)
    st, head, record = finetune_minilm(texts, labels)
    assert record["train_texts"] == 96 and len(record["train_loss_by_epoch"]) == 1
    assert list(head.classes_) == sorted(set(labels))

    onnx_path = tmp_path / "middle-fp32.onnx"
    export_onnx(st, onnx_path)
    probe = [*texts[:6], "", "Meh."]
    torch_side = head.predict_proba(
        st.encode(probe, normalize_embeddings=True, show_progress_bar=False)
    )
    joblib.dump(head, tmp_path / "head.joblib")
    served = OnnxEmbeddingClassifier(
        onnx_path, minilm_l6_dir() / "tokenizer.json", tmp_path / "head.joblib"
    )
    assert served.labels == tuple(head.classes_)
    np.testing.assert_allclose(served.predict_batch(probe), torch_side, atol=2e-4)
    # fine-tuning changed the encoder: the packaged model embeds differently now
    from tiergate.demo.export import load_sentence_transformer

    base = load_sentence_transformer(minilm_l6_dir())
    before = base.encode(probe[:3], normalize_embeddings=True, show_progress_bar=False)
    after = st.encode(probe[:3], normalize_embeddings=True, show_progress_bar=False)
    assert float(np.abs(before - after).max()) > 1e-3


def test_stacked_head_is_the_stacker_over_the_logit_and_the_log_odds() -> None:
    from tiergate.demo.finetune import stacked_head
    from tiergate.models.stack import stack_features

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(9, 4))
    p = rng.dirichlet([1.0, 1.0], size=9)
    head = head_from_linear(rng.normal(size=(2, 4)), rng.normal(size=2), ["neg", "pos"])
    a, b, c = 0.7, 0.4, -0.2
    d = head.decision_function(emb)
    logp = np.log(np.clip(p, 1e-6, 1.0))
    want = 1.0 / (1.0 + np.exp(-(a * d + b * (logp[:, 1] - logp[:, 0]) + c)))
    got = stacked_head(head, a, b, c).predict_proba(stack_features(emb, p))[:, 1]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # (1, 0, 0) is the fine-tuned head alone, whatever the stacked model says
    same = stacked_head(head, 1.0, 0.0, 0.0).predict_proba(stack_features(emb, p))
    np.testing.assert_allclose(same, head.predict_proba(emb), rtol=1e-9)


def test_the_demo_middle_tier_is_stacked_with_nb_and_checks_its_inputs(
    demo_dir: Path, tmp_path: Path
) -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from tiergate.errors import ConfigError
    from tiergate.models.stack import stack_features

    files = (demo_dir / "middle-int8.onnx", demo_dir / "middle-tokenizer.json")
    head_path, fast_path = demo_dir / "middle-head.joblib", demo_dir / "fast.joblib"
    middle = OnnxEmbeddingClassifier(*files, head_path, stack_path=fast_path)
    texts = ["A gorgeous, heartfelt film.", "Dull, overlong and utterly forgettable.", "Meh."]
    head, fast = joblib.load(head_path), joblib.load(fast_path)
    want = head.predict_proba(
        stack_features(middle.embedder.embed(texts), fast.predict_proba(texts))
    )
    np.testing.assert_allclose(middle.predict_batch(texts), want, rtol=1e-9)
    with pytest.raises(ConfigError, match="takes 386 features"):
        OnnxEmbeddingClassifier(*files, head_path)
    other = make_pipeline(CountVectorizer(), LogisticRegression()).fit(
        ["good", "bad", "fine", "awful"], ["a", "b", "a", "b"]
    )
    joblib.dump(other, tmp_path / "other.joblib")
    with pytest.raises(ConfigError, match="must be the same"):
        OnnxEmbeddingClassifier(*files, head_path, stack_path=tmp_path / "other.joblib")
