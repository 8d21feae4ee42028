"""Pair-set construction and the semantic threshold calibration (synthetic data)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiergate.cache import (
    Pair,
    build_pairs,
    calibrate_threshold,
    cascade_answers,
    evaluate_threshold,
    neighbour_pairs,
    read_pairs,
    score_pairs,
    write_pairs,
)
from tiergate.cache.pairs import PERTURBATIONS
from tiergate.errors import CalibrationError, ConfigError
from tiergate.types import Result

SNIPPETS = [
    "The plot is thin and the jokes fall flat, but the cast is likeable enough.",
    "A gorgeous, moving film; one of the year's best.",
    "Tedious and overlong: the second half drags badly.",
    "Funny, warm and surprisingly wise about growing up.",
]


def synthetic(n: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Similarities in [0.5, 1]; P(false hit) falls from 60 % at 0.5 to 0 at 1."""
    rng = np.random.default_rng(seed)
    sims = rng.uniform(0.5, 1.0, n)
    p_false = 0.6 * ((1.0 - sims) / 0.5) ** 3
    return sims, rng.random(n) < p_false


def true_rate(threshold: float) -> float:
    # E[p_false | s >= t] for s ~ U(0.5, 1): mean of 0.6 * u^3 over u = (1 - s) / 0.5 in [0, a].
    a = (1.0 - threshold) / 0.5
    return 0.6 * a**3 / 4


def test_calibrated_threshold_meets_the_bound_on_fresh_data() -> None:
    sims, false = synthetic(20_000, seed=1)
    cal = calibrate_threshold(sims, false, bound=0.01, confidence=0.95)
    assert cal.false_hit_upper_bound <= 0.01
    assert true_rate(cal.threshold) <= 0.01
    assert cal.start_threshold >= cal.threshold and cal.n_tested >= 1
    fresh = evaluate_threshold(*synthetic(20_000, seed=2), cal.threshold)
    assert fresh["false_hit_rate"] <= 0.012
    # not needlessly strict: the true rate at the chosen threshold is close to the bound
    assert true_rate(cal.threshold - 0.03) > 0.01
    assert cal.hit_rate > 0.3
    assert set(cal.to_dict()) >= {"threshold", "hit_rate", "false_hit_upper_bound", "confidence"}


def test_guarantee_holds_over_many_calibration_draws() -> None:
    # With confidence 0.8 the true rate may exceed the bound in at most ~20 % of draws.
    failures = infeasible = 0
    for seed in range(40):
        try:
            cal = calibrate_threshold(*synthetic(3000, seed), bound=0.02, confidence=0.8, seed=seed)
        except CalibrationError:
            infeasible += 1  # allowed (no threshold served), but should be rare here
            continue
        failures += true_rate(cal.threshold) > 0.02
    assert failures <= 14  # binomial(40, 0.2): P[X > 14] < 1 %
    assert infeasible <= 4


def test_too_few_pairs_is_a_calibration_error() -> None:
    sims, false = synthetic(200, seed=3)
    with pytest.raises(CalibrationError, match="at least 299 hits"):
        calibrate_threshold(sims, false, bound=0.01, confidence=0.95)


def test_perturbations_are_deterministic_and_change_the_text() -> None:
    a = build_pairs(SNIPPETS, ["neg", "pos", "neg", "pos"], per_text=3, seed=7, source="s")
    b = build_pairs(SNIPPETS, ["neg", "pos", "neg", "pos"], per_text=3, seed=7, source="s")
    assert a == b and len(a) >= 8
    assert {p.kind for p in a} <= set(PERTURBATIONS)
    for p in a:
        assert p.query != p.reference and p.query_label == p.reference_label
        assert p.source.startswith("s:")
    assert build_pairs(SNIPPETS, per_text=3, seed=8) != a


def test_clause_order_swaps_clauses() -> None:
    (pair,) = build_pairs(SNIPPETS[:1], per_text=1, kinds=["clause_order"])
    assert (
        pair.query == "The cast is likeable enough, but the plot is thin and the jokes fall flat."
    )


def test_pairs_round_trip(tmp_path: Path) -> None:
    pairs = build_pairs(SNIPPETS, per_text=2)
    assert write_pairs(tmp_path / "p" / "pairs.jsonl", pairs) == len(pairs)
    assert read_pairs(tmp_path / "p" / "pairs.jsonl") == pairs
    (tmp_path / "bad.jsonl").write_text('{"nope": 1}\n')
    with pytest.raises(ConfigError):
        read_pairs(tmp_path / "bad.jsonl")


class WordsEmbedder:
    """A fake embedder: normalised bag of lower-cased words hashed into 64 buckets.
    Deterministic and model-free, enough to rank near duplicates above unrelated text."""

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(",", " ").replace(".", " ").split():
                out[i, sum(map(ord, w)) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_neighbour_pairs_find_the_near_duplicate() -> None:
    texts = [*SNIPPETS, "The plot is thin and the jokes fall flat but the cast is likeable."]
    pairs = neighbour_pairs(texts, None, WordsEmbedder(), min_similarity=0.8)
    assert {(p.query, p.reference) for p in pairs} == {(texts[0], texts[4]), (texts[4], texts[0])}


def test_score_pairs_in_pair_and_pool_modes() -> None:
    pairs = [
        Pair("a fine film", "A fine film.", "casing"),
        Pair("a fine flim", "A fine film.", "typo"),
        Pair("a dull film", "a dull film indeed", "filler"),
        Pair("no answer", "A fine film.", "typo"),
    ]
    answers = {
        "a fine film": "pos", "A fine film.": "pos", "a fine flim": "neg",
        "a dull film": "neg", "a dull film indeed": "neg", "no answer": None,
    }  # fmt: skip
    sims, false = score_pairs(pairs, WordsEmbedder(), answers, mode="pair")
    assert len(sims) == 3 and false.tolist() == [False, True, False]
    assert sims[0] == pytest.approx(1.0)
    pool_sims, pool_false = score_pairs(pairs, WordsEmbedder(), answers, mode="pool")
    assert len(pool_sims) == 3 and pool_false.tolist() == [False, True, False]
    assert math.isclose(pool_sims[0], sims[0], rel_tol=1e-6)


async def test_cascade_answers_drop_degraded_answers() -> None:
    class Fake:
        async def predict_batch(
            self, texts: list[str], deadline_ms: float | None = None
        ) -> list[Result]:
            return [
                Result("pos", 0.9, "fast", ("fast",), None, "deadline" if "slow" in t else None,
                       1.0, 0.0, "1", "1")
                for t in texts
            ]  # fmt: skip

    answers = await cascade_answers(Fake(), ["a", "slow b", "a"], batch_size=1)
    assert answers == {"a": "pos", "slow b": None}
