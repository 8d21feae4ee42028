"""Calibrate the semantic cache's threshold with a finite-sample false-hit guarantee.

For each evaluation pair (see :mod:`tiergate.cache.pairs`) we know the similarity the
cache would see and whether serving the cached answer would be a *false hit* (the
cascade answers the query differently from the reference). We want the lowest
threshold (most hits) whose false-hit rate among hits is at most ``bound`` on future
pairs from the same distribution, with probability ``confidence`` over the draw of the
calibration pairs:

1. Each grid threshold ``t`` (fixed, from high to low) is a null hypothesis
   ``H_t: P(false | similarity ≥ t) > bound``, tested exactly with the binomial
   (Clopper-Pearson) test on the hits at ``t``.
2. Fixed-sequence testing from high to low, each at level ``1 - confidence``,
   stopping at the first non-rejection, controls the family-wise error without a
   multiplicity correction; the lowest rejected threshold is chosen.
3. Very high thresholds have too few hits to ever reject, which would stop the
   sequence at once; so a separate ``order_fraction`` of the pairs only decides where
   the sequence starts (where those pairs certify most clearly: the lowest p-value).
   The test uses the other pairs only, so the guarantee is untouched.

Two ways to score pairs: ``pair`` (each query against its own reference) and ``pool``
(each query against every reference, top-1 — closer to a full cache, where a query
can also meet a wrong neighbour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from tiergate.cache.audit import false_hit_bounds
from tiergate.cache.exact import normalise_text
from tiergate.cache.pairs import Pair
from tiergate.cache.semantic import Embedder
from tiergate.calibration import binomial_pvalue
from tiergate.errors import CalibrationError
from tiergate.types import Result

__all__ = [
    "SEMANTIC_FORMAT",
    "SemanticCalibration",
    "calibrate_semantic_cache",
    "calibrate_threshold",
    "cascade_answers",
    "evaluate_threshold",
    "score_pairs",
]

SEMANTIC_FORMAT = "tiergate-semantic-cache/1"
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class _Predictor(Protocol):
    async def predict_batch(
        self, texts: list[str], deadline_ms: float | None = None
    ) -> list[Result]: ...


async def cascade_answers(
    service: _Predictor, texts: Sequence[str], *, batch_size: int = 64, deadline_ms: float = 600_000
) -> dict[str, str | None]:
    """What the real cascade answers for each distinct text (``None`` when degraded)."""
    unique = list(dict.fromkeys(texts))
    out: dict[str, str | None] = {}
    for s in range(0, len(unique), batch_size):
        chunk = unique[s : s + batch_size]
        results = await service.predict_batch(chunk, deadline_ms=deadline_ms)
        for text, r in zip(chunk, results, strict=True):
            out[text] = r.output if r.degraded is None else None
    return out


def _embed_all(
    embedder: Embedder, texts: Sequence[str], batch_size: int
) -> dict[str, npt.NDArray[np.float32]]:
    unique = list(dict.fromkeys(texts))
    vecs = [embedder.embed(unique[s : s + batch_size]) for s in range(0, len(unique), batch_size)]
    matrix = np.concatenate(vecs) if vecs else np.zeros((0, 0), dtype=np.float32)
    return {t: matrix[i] for i, t in enumerate(unique)}


def score_pairs(
    pairs: Sequence[Pair],
    embedder: Embedder,
    answers: dict[str, str | None],
    *,
    mode: Literal["pair", "pool"] = "pair",
    batch_size: int = 128,
) -> tuple[FloatArray, BoolArray]:
    """``(similarity, false_hit)`` per usable pair (both answers known, not degraded).

    In ``pool`` mode the reference is whichever reference of ``pairs`` is most similar
    to the query (an identical text is skipped: the exact cache answers it).
    """
    usable = [
        p
        for p in pairs
        if answers.get(p.query) is not None and answers.get(p.reference) is not None
    ]
    if not usable:
        return np.zeros(0), np.zeros(0, dtype=bool)
    vec = _embed_all(
        embedder, [p.query for p in usable] + [p.reference for p in usable], batch_size
    )
    q = np.stack([vec[p.query] for p in usable])
    if mode == "pair":
        r = np.stack([vec[p.reference] for p in usable])
        sims = (q * r).sum(axis=1).astype(np.float64)
        false = np.array([answers[p.query] != answers[p.reference] for p in usable])
        return sims, false
    refs = list(dict.fromkeys(p.reference for p in usable))
    pool = np.stack([vec[t] for t in refs])
    ref_keys = {normalise_text(t): i for i, t in enumerate(refs)}
    sims_out = np.zeros(len(usable))
    false_out = np.zeros(len(usable), dtype=bool)
    for s in range(0, len(usable), batch_size):
        block = q[s : s + batch_size] @ pool.T
        for row, p in enumerate(usable[s : s + batch_size]):
            same = ref_keys.get(normalise_text(p.query))
            if same is not None:
                block[row, same] = -2.0
            j = int(block[row].argmax())
            sims_out[s + row] = block[row, j]
            false_out[s + row] = answers[p.query] != answers[refs[j]]
    return sims_out, false_out


@dataclass(frozen=True)
class SemanticCalibration:
    """The chosen threshold and what was certified about it (on the test part)."""

    threshold: float
    bound: float
    confidence: float
    hit_rate: float
    false_hit_rate: float
    false_hit_upper_bound: float
    n: int
    n_hits: int
    n_false_hits: int
    n_order: int
    start_threshold: float
    n_tested: int
    method: str = "fixed-sequence/clopper-pearson"

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def evaluate_threshold(
    similarity: FloatArray, false_hit: BoolArray, threshold: float, confidence: float = 0.95
) -> dict[str, float | int]:
    """Hit rate, false-hit rate among hits and its Clopper-Pearson upper bound at ``threshold``."""
    hits = similarity >= threshold
    n_hits, k = int(hits.sum()), int((hits & false_hit).sum())
    return {
        "threshold": threshold,
        "n": len(similarity),
        "n_hits": n_hits,
        "n_false_hits": k,
        "hit_rate": n_hits / max(len(similarity), 1),
        "false_hit_rate": k / n_hits if n_hits else 0.0,
        "false_hit_upper_bound": false_hit_bounds(k, n_hits, confidence)[1],
    }


def default_grid() -> FloatArray:
    """Thresholds 1.0, 0.9975, ..., 0.5: fixed before seeing any data."""
    return np.round(np.linspace(1.0, 0.5, 201), 4)


def calibrate_threshold(
    similarity: FloatArray,
    false_hit: BoolArray,
    *,
    bound: float = 0.01,
    confidence: float = 0.95,
    order_fraction: float = 0.2,
    grid: FloatArray | None = None,
    seed: int = 0,
) -> SemanticCalibration:
    """Lowest threshold with ``P[false-hit rate ≤ bound] ≥ confidence`` (see module doc).

    Raises :class:`CalibrationError` if no threshold can be certified on these pairs.
    """
    if not 0 < bound < 1 or not 0 < confidence < 1:
        raise ValueError("bound and confidence must be in (0, 1)")
    similarity = np.asarray(similarity, dtype=np.float64)
    false_hit = np.asarray(false_hit, dtype=bool)
    grid = default_grid() if grid is None else np.sort(np.asarray(grid, dtype=np.float64))[::-1]
    delta = 1.0 - confidence
    perm = np.random.default_rng(seed).permutation(len(similarity))
    n_order = int(order_fraction * len(similarity))
    o_idx, t_idx = perm[:n_order], perm[n_order:]
    s_o, f_o, s_t, f_t = similarity[o_idx], false_hit[o_idx], similarity[t_idx], false_hit[t_idx]
    scale = len(t_idx) / max(n_order, 1)
    n_min = math.ceil(math.log(delta) / math.log(1.0 - bound))

    def certifies(n: int, k: int) -> bool:
        return n > 0 and binomial_pvalue(k, n, bound) <= delta

    # Start where the ordering pairs certify most clearly (lowest p-value, scaled to the
    # test size): above it hits are too few, below it false hits grow.
    pvalues = []
    for t in grid:
        hits = s_o >= t
        n, k = round(hits.sum() * scale), round((hits & f_o).sum() * scale)
        pvalues.append(binomial_pvalue(k, n, bound) if n >= n_min else 2.0)
    start = int(np.argmin(pvalues))
    if pvalues[start] > 1.0:
        raise _infeasible(bound, confidence, similarity, false_hit, grid, n_min)

    chosen: int | None = None
    tested = 0
    for i in range(start, len(grid)):
        tested += 1
        hits = s_t >= grid[i]
        if not certifies(int(hits.sum()), int((hits & f_t).sum())):
            break
        chosen = i
    if chosen is None:
        raise _infeasible(bound, confidence, s_t, f_t, grid, n_min)
    t = float(grid[chosen])
    ev = evaluate_threshold(s_t, f_t, t, confidence)
    return SemanticCalibration(
        threshold=t, bound=bound, confidence=confidence,
        hit_rate=float(ev["hit_rate"]), false_hit_rate=float(ev["false_hit_rate"]),
        false_hit_upper_bound=float(ev["false_hit_upper_bound"]), n=len(t_idx),
        n_hits=int(ev["n_hits"]), n_false_hits=int(ev["n_false_hits"]), n_order=n_order,
        start_threshold=float(grid[start]), n_tested=tested,
    )  # fmt: skip


def _infeasible(
    bound: float,
    confidence: float,
    sims: FloatArray,
    false: BoolArray,
    grid: FloatArray,
    n_min: int,
) -> CalibrationError:
    # Report the tightest bound these pairs support (not a certificate: just a guide).
    best = (1.0, 1.0)
    for t in grid:
        hits = sims >= t
        upper = false_hit_bounds(int((hits & false).sum()), int(hits.sum()), confidence)[1]
        best = min(best, (upper, float(t)))
    return CalibrationError(
        f"no similarity threshold keeps the semantic cache's false-hit rate under {bound:.4f} "
        f"with confidence {confidence:.2f} on {len(sims)} pairs (certifying needs at least "
        f"{n_min} hits with no false hit); the best upper bound here is {best[0]:.4f} at "
        f"threshold {best[1]:.4f}. Add pairs, raise the bound or disable the semantic cache",
        bound=bound,
        confidence=confidence,
        n=len(sims),
        best_upper_bound=best[0],
        best_threshold=best[1],
    )


async def calibrate_semantic_cache(
    service: _Predictor,
    embedder: Embedder,
    pairs: Sequence[Pair],
    *,
    namespace: str,
    embedder_version: str,
    bound: float = 0.01,
    confidence: float = 0.95,
    mode: Literal["pair", "pool"] = "pool",
    seed: int = 0,
) -> dict[str, Any]:
    """Answer every pair with the real cascade, calibrate, and return the artifact body.

    ``namespace`` (see :func:`~tiergate.cache.exact.make_namespace`) and
    ``embedder_version`` are recorded so the service can refuse a threshold that was
    calibrated for other models. Raises :class:`CalibrationError` if infeasible.
    """
    answers = await cascade_answers(service, [t for p in pairs for t in (p.query, p.reference)])
    sims, false = score_pairs(pairs, embedder, answers, mode=mode)
    cal = calibrate_threshold(sims, false, bound=bound, confidence=confidence, seed=seed)
    return {
        "format": SEMANTIC_FORMAT,
        **cal.to_dict(),
        "mode": mode,
        "namespace": namespace,
        "embedder_version": embedder_version,
        "pairs": len(pairs),
        "usable_pairs": len(sims),
    }
