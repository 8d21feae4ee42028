"""Trace building and the with/without semantic-cache replay.

The embedder here is a fake: a deterministic bag-of-words hashing embedder (lower-cased
words hashed into 64 buckets, L2-normalised), so exact repeats and case changes have
similarity 1. The real MiniLM embedder is tested elsewhere. ``predict`` is scripted:
:func:`tiergate.testing.keyword_sentiment` wrapped into a :class:`Result`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiergate.cache import SemanticCache
from tiergate.cache.exact import normalise_text
from tiergate.evaluation.cache_replay import build_trace, replay_semantic, trace_counts
from tiergate.testing import keyword_sentiment
from tiergate.types import Result

_DIM = 64


class BagOfWordsEmbedder:
    """Fake embedder: hashed lower-case word counts, L2-normalised."""

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        out = np.zeros((len(texts), _DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % _DIM] += 1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm > 0 else out[row]
            if norm == 0:
                out[row, 0] = 1.0
        return out


class Scripted:
    """keyword_sentiment as a one-tier cascade costing 1.0 per call; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, text: str) -> Result:
        self.calls += 1
        p = keyword_sentiment([text])[0]
        k = int(p.argmax())
        return Result(
            output=("negative", "positive")[k], confidence=float(p[k]), tier="kw",
            path=("kw",), cache=None, degraded=None, latency_ms=1.0, cost=1.0,
            model_version="kw-1", calibration_version=None,
        )  # fmt: skip


TEXTS = [f"review {i}: " + ("a great film" if i % 2 else "a dull awful plot") for i in range(60)]
LABELS = ["positive" if i % 2 else "negative" for i in range(60)]


def cache(threshold: float = 0.99) -> SemanticCache:
    return SemanticCache(BagOfWordsEmbedder(), threshold, offload=False)


def test_build_trace_is_deterministic_with_the_requested_shares() -> None:
    a = build_trace(TEXTS, LABELS, n=50, repeat_ratio=0.2, paraphrase_ratio=0.3, seed=3)
    assert a == build_trace(TEXTS, LABELS, n=50, repeat_ratio=0.2, paraphrase_ratio=0.3, seed=3)
    assert a != build_trace(TEXTS, LABELS, n=50, repeat_ratio=0.2, paraphrase_ratio=0.3, seed=4)
    assert len(a) == 50 and trace_counts(50, 0.2, 0.3) == (25, 10, 15)
    source = dict(zip(TEXTS, LABELS, strict=True))
    seen: list[str] = []
    fresh = repeats = paraphrases = 0
    for text, label in a:
        if text in source and text not in seen:
            fresh += 1
            assert label == source[text]
        elif text in source:
            repeats += 1
            assert label == source[text]
        else:  # a perturbation of an earlier fresh text, with that text's label
            paraphrases += 1
            origins = [s for s in seen if _close(text, s)]
            assert origins and {source[s] for s in origins} == {label}
            assert normalise_text(text) not in {normalise_text(s) for s in seen}
        if text in source:
            seen.append(text)
    assert a[0][0] in source
    assert (fresh, repeats, paraphrases) == (25, 10, 15)


def _close(text: str, source: str) -> bool:
    # Perturbations keep the review number (the "review N" prefix may change case).
    m = re.search(r"\d+", source)
    return m is not None and re.search(rf"(?<!\d){m.group()}(?!\d)", text) is not None


def test_build_trace_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="fresh"):
        build_trace(TEXTS, LABELS, n=10, repeat_ratio=0.6, paraphrase_ratio=0.5)
    with pytest.raises(ValueError, match="at least as many texts"):
        build_trace(TEXTS[:3], LABELS[:3], n=10)
    with pytest.raises(ValueError, match="labels"):
        build_trace(TEXTS, LABELS[:5], n=10)
    assert build_trace(TEXTS, LABELS, n=0) == []


async def test_repeats_hit_the_cache_for_free() -> None:
    trace = build_trace(TEXTS, LABELS, n=40, repeat_ratio=0.25, paraphrase_ratio=0.0, seed=1)
    predict = Scripted()
    out = await replay_semantic(predict, cache(), trace)
    sem, base = out["semantic"], out["cascade"]
    assert predict.calls == 40  # the cascade answers every request once, not twice
    assert sem["cache_hits"] >= 10 and sem["cache_hit_share"] > 0
    assert base["cache_hit_share"] == 0 and base["mean_cost"] == 1.0
    # Hits cost 0, misses cost what the cascade costs.
    assert sem["mean_cost"] == pytest.approx((40 - sem["cache_hits"]) / 40)
    assert out["cost_ratio"] == pytest.approx(sem["mean_cost"])
    assert sem["false_hits"] == 0 and sem["false_hit_rate"] == 0.0


async def test_accuracy_and_false_hits_match_a_hand_count() -> None:
    # keyword_sentiment: "great" positive, "awful" negative, neither -> a tie -> negative.
    trace = [
        ("a great film", "positive"),  # miss; cascade right
        ("a great film", "positive"),  # exact repeat: hit, right
        ("an awful film", "negative"),  # miss; cascade right
        ("A GREAT FILM", "negative"),  # hit (same words), serves positive: wrong;
        #                               the cascade alone says positive too: not a false hit
        ("film a great", "positive"),  # same bag of words: hit, right
        ("great a film not", "positive"),  # miss at 0.99 (extra word)
        ("film great a", "negative"),  # hit -> positive, wrong; not a false hit either
    ]
    out = await replay_semantic(Scripted(), cache(0.99), trace)
    base, sem = out["cascade"], out["semantic"]
    # Cascade alone: outputs pos, pos, neg, pos, pos, pos, pos -> right on 0,1,2,4,5.
    assert base["correct"] == 5 and base["accuracy"] == pytest.approx(5 / 7)
    assert sem["cache_hits"] == 4 and sem["cache_hit_share"] == pytest.approx(4 / 7)
    assert sem["correct"] == 5 and out["accuracy_change"] == pytest.approx(0.0)
    assert sem["mean_cost"] == pytest.approx(3 / 7)
    assert sem["false_hits"] == 0 and sem["false_hit_rate"] == 0.0
    assert base["false_hit_rate"] is None and out["n"] == 7


async def test_a_false_hit_is_a_hit_that_disagrees_with_the_cascade() -> None:
    # At a low threshold the query with "awful awful" added is served the base text's
    # answer; the cascade says negative (two negative keywords, one positive): false hit.
    base = "story cast score music pacing editing lighting sets great"
    trace = [
        (base, "positive"),
        (base + " indeed", "positive"),  # hit, agrees
        (base + " awful awful", "negative"),  # hit, the cascade alone disagrees
        ("boring awful", "negative"),  # miss
    ]
    predict = Scripted()
    alone = [(await predict(t)).output for t, _ in trace]
    assert alone == ["positive", "positive", "negative", "negative"]
    out = await replay_semantic(Scripted(), cache(0.8), trace)
    sem = out["semantic"]
    assert sem["cache_hits"] == 2 and sem["false_hits"] == 1
    assert sem["false_hit_rate"] == pytest.approx(0.5)
    assert out["cascade"]["accuracy"] == 1.0 and sem["accuracy"] == pytest.approx(0.75)
    assert out["accuracy_change"] == pytest.approx(-0.25)


EVAL_CONFIG = """
service: replay-test
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment",
            labels: [negative, positive]}
    cost_per_call: 1.0
    threshold: 0.8
  - name: accurate
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment",
            labels: [negative, positive]}
    cost_per_call: 10.0
"""


@pytest.mark.parametrize("threshold", [None, 0.99])
def test_evaluate_reports_the_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: float | None
) -> None:
    from tiergate.evaluation import evaluate_config

    monkeypatch.setattr("tiergate.cache.load_minilm_embedder", lambda d: BagOfWordsEmbedder())
    data = tmp_path / "test.jsonl"
    rows = zip(TEXTS, LABELS, strict=True)
    data.write_text("".join(json.dumps({"input": t, "label": y}) + "\n" for t, y in rows))
    config = tmp_path / "config.yaml"
    config.write_text(EVAL_CONFIG)
    stages: list[str] = []
    report = evaluate_config(
        config, data, report_dir=tmp_path / "out", semantic_threshold=threshold,
        progress=lambda s, i, n: stages.append(s),
    )  # fmt: skip
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    sc = report["semantic_cache"]
    assert saved["semantic_cache"] == sc
    if threshold is None:
        assert sc is None and "semantic cache is not enabled" in html
        return
    assert "semantic replay" in stages
    assert sc["n"] == 60 and sc["threshold"] == threshold
    assert sc["trace"] == {"fresh": 36, "repeats": 12, "paraphrases": 12, "seed": 0}
    assert sc["semantic"]["cache_hits"] >= 12  # every exact repeat at least
    assert sc["semantic"]["mean_cost"] < sc["cascade"]["mean_cost"]
    assert "semantic cache + cascade" in html
