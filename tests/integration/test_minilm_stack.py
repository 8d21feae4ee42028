"""The middle tier (`kind: minilm-stack`) and the embedding it shares with the semantic cache.

Real parts: the packaged MiniLM-L3 int8 embedder, scikit-learn models trained here on a
few labelled sentences, the real service with the real semantic cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from tiergate.cache import MemoEmbedder, load_minilm_embedder, shared_minilm_embedder
from tiergate.config import load_config, tiergate_home
from tiergate.errors import ConfigError
from tiergate.models.onnx import OnnxSentenceEmbedder
from tiergate.models.stack import MiniLMStackClassifier, stack_features
from tiergate.service import Service

pytestmark = pytest.mark.integration

POS = ["a gorgeous, moving film", "wonderful acting and a great story", "a joy to watch",
       "funny, warm and smart", "one of the best films this year", "brilliant and touching"]  # fmt: skip
NEG = ["a dull, tedious mess", "the plot is thin and the jokes fall flat", "a waste of time",
       "boring and far too long", "the worst film this year", "clumsy, cheap and ugly"]  # fmt: skip
TEXTS = POS + NEG
LABELS = ["positive"] * len(POS) + ["negative"] * len(NEG)


class Counting:
    """Forwards to the real embedder and counts the texts that reach it."""

    def __init__(self, inner: OnnxSentenceEmbedder) -> None:
        self.inner = inner
        self.texts = 0
        self.sha256, self.dim, self.version = inner.sha256, inner.dim, inner.version

    def embed(self, texts: Sequence[str]) -> Any:
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def minilm() -> OnnxSentenceEmbedder:
    return load_minilm_embedder(tiergate_home() / "minilm")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, minilm: OnnxSentenceEmbedder) -> Path:
    """fast.joblib (TF-IDF + LR) and middle-head.joblib (LR on [MiniLM, log p(fast)])."""
    d = tmp_path_factory.mktemp("stack")
    fast = Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression())])
    fast.fit(TEXTS, LABELS)
    joblib.dump(fast, d / "fast.joblib")
    head = LogisticRegression(C=10.0).fit(
        stack_features(minilm.embed(TEXTS), fast.predict_proba(TEXTS)), LABELS
    )
    joblib.dump(head, d / "middle-head.joblib")
    joblib.dump(LogisticRegression().fit(minilm.embed(TEXTS), LABELS), d / "emb-head.joblib")
    other = LogisticRegression().fit(np.eye(3)[[0, 1, 2, 0]], ["a", "b", "c", "a"])
    joblib.dump(other, d / "other-labels.joblib")
    return d


def test_memo_gives_the_models_rows_and_runs_it_once_per_text(minilm: OnnxSentenceEmbedder) -> None:
    counting = Counting(minilm)
    memo = MemoEmbedder(counting, capacity=3)  # type: ignore[arg-type]
    first = memo.embed(["a joy to watch", "a waste of time"])
    assert np.allclose(first, minilm.embed(["a joy to watch", "a waste of time"]), atol=1e-6)
    assert counting.texts == 2
    again = memo.embed(["a waste of time", "a joy to watch", "boring"])
    assert counting.texts == 3  # only "boring" reached the model
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[1], first[0])
    assert (memo.hits, memo.misses) == (2, 3)
    memo.embed(["funny"])  # capacity 3: the least recently used ("a waste of time") goes
    memo.embed(["a waste of time"])
    assert counting.texts == 5
    assert memo.embed([]).shape == (0, minilm.dim)


def test_stacked_prediction_is_the_head_over_embedding_and_log_probs(
    models: Path, minilm: OnnxSentenceEmbedder
) -> None:
    clf = MiniLMStackClassifier(minilm, models / "middle-head.joblib", models / "fast.joblib")
    assert clf.labels == ("negative", "positive")
    got = clf.predict_batch(TEXTS)
    fast, head = joblib.load(models / "fast.joblib"), joblib.load(models / "middle-head.joblib")
    want = head.predict_proba(stack_features(minilm.embed(TEXTS), fast.predict_proba(TEXTS)))
    assert np.allclose(got, want, atol=1e-9)
    assert (np.array(clf.labels)[got.argmax(1)] == np.array(LABELS)).all()
    assert clf.predict_batch([]).shape == (0, 2)
    alone = MiniLMStackClassifier(minilm, models / "emb-head.joblib")
    assert alone.predict_batch(["a joy to watch"]).shape == (1, 2)
    assert alone.version != clf.version


def test_mismatched_models_are_refused_at_load(models: Path, minilm: OnnxSentenceEmbedder) -> None:
    with pytest.raises(ConfigError, match="takes 384 features"):  # head without the stack
        MiniLMStackClassifier(minilm, models / "emb-head.joblib", models / "fast.joblib")
    with pytest.raises(ConfigError, match="takes 386 features"):
        MiniLMStackClassifier(minilm, models / "middle-head.joblib")
    with pytest.raises(ConfigError, match="must be the same"):
        MiniLMStackClassifier(minilm, models / "middle-head.joblib", models / "other-labels.joblib")


def test_cost_probe_pays_the_embedding_unless_it_is_shared(
    models: Path, minilm: OnnxSentenceEmbedder
) -> None:
    counting = Counting(minilm)
    memo = MemoEmbedder(counting)  # type: ignore[arg-type]
    clf = MiniLMStackClassifier(memo, models / "middle-head.joblib", models / "fast.joblib")
    memo.embed(["a joy to watch"])
    clf.cost_probe(["a joy to watch"])
    assert counting.texts == 2  # not shared: the probe ran the model although it was remembered
    clf.embedding_shared = True
    clf.cost_probe(["a joy to watch"])
    assert counting.texts == 2


CONFIG = """
service: three
tiers:
  - name: fast
    model: {{kind: sklearn, path: {d}/fast.joblib}}
    threshold: 1.0
  - name: middle
    model: {{kind: minilm-stack, head: {d}/middle-head.joblib, stack: {d}/fast.joblib}}
    threshold: 1.0
  - name: accurate
    model: {{kind: sklearn, path: {d}/fast.joblib}}
cache: {{exact: {{enabled: false}}, semantic: {{enabled: {semantic}, threshold: 0.999}}}}
"""


@pytest.mark.parametrize("semantic", [True, False])
def test_a_request_reaching_the_middle_tier_is_embedded_once(
    models: Path, tmp_path: Path, semantic: bool
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(d=models, semantic=str(semantic).lower()))
    svc = Service.from_config(load_config(path))
    try:
        memo = shared_minilm_embedder(tiergate_home() / "minilm")
        middle = svc.tiers[1]
        assert getattr(middle.adapter, "inner", middle.adapter).embedding_shared is semantic
        before = memo.misses, memo.hits
        text = f"an unusual sentence nobody has sent before ({semantic})"
        r = asyncio.run(svc.predict(text)).to_dict()
        assert r["path"] == ["fast", "middle", "accurate"]
        assert memo.misses - before[0] == 1  # the model ran once for this request
        assert memo.hits - before[1] == (1 if semantic else 0)  # the middle tier read it back
        assert svc.tiers[1].cost_per_call > 0
    finally:
        svc.close()
