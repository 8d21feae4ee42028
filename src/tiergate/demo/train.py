"""The demo's classifiers, corpus embedding and latency measurement.

Hyper-parameters are chosen by cross-validation on the train split: never on test, and
not on the calibration split either, whose only job is to certify thresholds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import FeatureUnion, Pipeline

from tiergate.demo.features import NBLogCountRatio
from tiergate.models.onnx import Embeddings, OnnxSentenceEmbedder

__all__ = [
    "FAST_CS",
    "HEAD_CS",
    "Choice",
    "choose_by_cv",
    "embed_corpus",
    "measure_latency",
    "train_fast",
    "train_head",
]

FAST_CS = (0.3, 1.0, 3.0, 10.0, 30.0)
HEAD_CS = (0.1, 0.3, 1.0, 3.0, 10.0)
Choice = dict[str, Any]  # what was tried and what won, for the manifest


def choose_by_cv(
    pipeline: Pipeline, x_train: Any, y_train: Sequence[str], cs: Sequence[float]
) -> tuple[Pipeline, Choice]:
    """Pick the classifier's ``C`` by 5-fold cross-validation on train, refit on all of it.

    The calibration split is left untouched, so the thresholds certified on it are not
    biased by model selection.
    """
    search = GridSearchCV(
        pipeline,
        {"clf__C": list(cs)},
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        scoring="accuracy",
        n_jobs=1,
        refit=True,
    )
    search.fit(x_train, list(y_train))
    tried = {
        f"{c:g}": round(float(s), 4)
        for c, s in zip(cs, search.cv_results_["mean_test_score"], strict=True)
    }
    best: Pipeline = search.best_estimator_
    return best, {"C": float(search.best_params_["clf__C"]), "cv_accuracy_by_C": tried}


def _fast_features(char_ngrams: bool) -> list[tuple[str, Any]]:
    # NB-weighted binary word 1-2 grams (Wang & Manning 2012): +0.5 point over TF-IDF
    # here, and faster. stop_words_ is dropped so the pickle is reproducible.
    words = CountVectorizer(ngram_range=(1, 2), binary=True, strip_accents="unicode")
    if not char_ngrams:
        return [("features", words), ("nb", NBLogCountRatio())]
    chars = CountVectorizer(
        analyzer="char_wb", ngram_range=(2, 5), binary=True, min_df=2, strip_accents="unicode"
    )
    union = FeatureUnion([("words", words), ("chars", chars)])
    return [("features", union), ("nb", NBLogCountRatio())]


def train_fast(
    train: tuple[list[str], list[str]],
    *,
    char_ngrams: bool = False,
    cs: Sequence[float] = FAST_CS,
) -> tuple[Pipeline, Choice]:
    """NB-weighted binary n-grams + LogisticRegression; ``C`` by cross-validation on train.

    ``char_ngrams`` adds char_wb 2-5 grams: a little more accuracy for ~2.5x the
    batch-1 latency, so the demo leaves it off.
    """
    pipeline = Pipeline([*_fast_features(char_ngrams), ("clf", LogisticRegression(max_iter=5000))])
    best, choice = choose_by_cv(pipeline, train[0], train[1], cs)
    _strip_stop_words(best)
    feats = "NB-weighted binary word 1-2 grams" + (" + char_wb 2-5" if char_ngrams else "")
    n_features = int(best.named_steps["nb"].r_.shape[0])
    return best, {"features": feats, "n_features": n_features, **choice}


def _strip_stop_words(pipeline: Pipeline) -> None:
    for step in pipeline.named_steps.values():
        for vec in getattr(step, "transformer_list", [("", step)]):
            if hasattr(vec[1], "stop_words_"):
                del vec[1].stop_words_


def train_head(
    train: tuple[Embeddings, list[str]],
    *,
    cs: Sequence[float] = HEAD_CS,
) -> tuple[LogisticRegression, Choice]:
    """LogisticRegression on sentence embeddings, ``C`` by cross-validation on train."""
    pipeline = Pipeline([("clf", LogisticRegression(max_iter=5000))])
    best, choice = choose_by_cv(pipeline, train[0], train[1], cs)
    head: LogisticRegression = best.named_steps["clf"]
    return head, choice


def embed_corpus(
    embedder: OnnxSentenceEmbedder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    advance: Callable[[int], None] | None = None,
) -> Embeddings:
    """Embed many texts in batches of similar length (less padding), in input order."""
    order = np.argsort(np.asarray(embedder.token_lengths(texts)), kind="stable")
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = embedder.embed([texts[i] for i in idx])
        if advance is not None:
            advance(len(idx))
    return out


def measure_latency(
    predict: Callable[[list[str]], object],
    texts: Sequence[str],
    *,
    singles: int = 200,
    batch_size: int = 32,
    batches: int = 8,
    warmup: int = 5,
) -> dict[str, float]:
    """Batch-1 latency (median, p90 over ``singles`` texts) and batch throughput."""
    pool = list(texts)
    if not pool:
        raise ValueError("measure_latency needs texts")
    for text in pool[:warmup]:
        predict([text])
    single_ms: list[float] = []
    for i in range(singles):
        t0 = time.perf_counter()
        predict([pool[i % len(pool)]])
        single_ms.append((time.perf_counter() - t0) * 1e3)
    n = 0
    t0 = time.perf_counter()
    for b in range(batches):
        batch = [pool[(b * batch_size + j) % len(pool)] for j in range(batch_size)]
        predict(batch)
        n += len(batch)
    elapsed = time.perf_counter() - t0
    single_ms.sort()
    return {
        "batch1_median_ms": round(statistics.median(single_ms), 3),
        "batch1_p90_ms": round(single_ms[int(0.9 * (len(single_ms) - 1))], 3),
        f"batch{batch_size}_texts_per_s": round(n / elapsed, 1),
    }
