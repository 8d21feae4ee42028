"""Replay a request trace with and without the semantic cache in front of the cascade.

:func:`build_trace` makes a deterministic trace from labelled data: fresh texts, exact
repeats of earlier ones and light perturbations of earlier ones (the perturbations of
:mod:`tiergate.cache.pairs`), each keeping the gold label of its source text.
:func:`replay_semantic` answers every request with the cascade alone and with the
semantic cache in front of it, and reports accuracy, the share answered from the
cache, mean cost and the false-hit rate for both. ``tiergate evaluate`` runs it through
:func:`semantic_replay_config` and :func:`replay_service` (exact cache off, so only the
semantic cache is measured).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from tiergate.cache.exact import normalise_text
from tiergate.cache.pairs import PERTURBATIONS
from tiergate.cache.semantic import SemanticCache
from tiergate.types import Result

if TYPE_CHECKING:
    from tiergate.config import ServiceConfig
    from tiergate.service import Service

__all__ = [
    "build_trace",
    "replay_semantic",
    "replay_service",
    "semantic_replay_config",
    "trace_counts",
]

Predict = Callable[[str], Awaitable[Result]]

_MAX_PERTURB_TRIES = 8
_REPLAY_DEADLINE_S = 60.0  # generous: the replay measures answers, not latency


def trace_counts(n: int, repeat_ratio: float, paraphrase_ratio: float) -> tuple[int, int, int]:
    """``(fresh, repeats, paraphrases)`` in a trace of ``n`` requests (rounded shares)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not (0.0 <= repeat_ratio <= 1.0 and 0.0 <= paraphrase_ratio <= 1.0):
        raise ValueError("repeat_ratio and paraphrase_ratio must be in [0, 1]")
    repeats, paraphrases = round(n * repeat_ratio), round(n * paraphrase_ratio)
    fresh = n - repeats - paraphrases
    if n > 0 and fresh < 1:
        raise ValueError("a trace needs at least one fresh request: lower the ratios")
    return fresh, repeats, paraphrases


def _perturb(text: str, rng: random.Random) -> str:
    kinds = sorted(PERTURBATIONS)
    for _ in range(_MAX_PERTURB_TRIES):
        out = PERTURBATIONS[rng.choice(kinds)](text, rng)
        if out is not None and normalise_text(out) != normalise_text(text):
            return out
    # A filler word always changes the text (and never returns None).
    out = PERTURBATIONS["filler"](text, rng)
    return out if out is not None else text + " tbh"


def build_trace(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    n: int,
    repeat_ratio: float = 0.2,
    paraphrase_ratio: float = 0.2,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """A deterministic trace of ``n`` ``(text, gold label)`` requests.

    ``round(n * repeat_ratio)`` requests repeat an earlier fresh text exactly and
    ``round(n * paraphrase_ratio)`` are a perturbation of one (casing, punctuation,
    typos, clause order, filler words or two of them, never equal after
    normalisation); the rest are distinct data rows in random order. The first request
    is always fresh; every request keeps its source text's gold label.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    fresh, repeats, paraphrases = trace_counts(n, repeat_ratio, paraphrase_ratio)
    if fresh > len(texts):
        raise ValueError(f"{fresh} fresh requests need at least as many texts, got {len(texts)}")
    rng = random.Random(seed)
    sources = iter(rng.sample(range(len(texts)), fresh))
    rest = ["repeat"] * repeats + ["paraphrase"] * paraphrases + ["fresh"] * (fresh - 1)
    rng.shuffle(rest)
    seen: list[int] = []
    trace: list[tuple[str, str]] = []
    for kind in ["fresh", *rest] if n > 0 else []:
        if kind == "fresh":
            i = next(sources)
            seen.append(i)
            trace.append((texts[i], labels[i]))
        else:
            i = rng.choice(seen)
            text = texts[i] if kind == "repeat" else _perturb(texts[i], rng)
            trace.append((text, labels[i]))
    return trace


def _mode(results: Sequence[Result], gold: Sequence[str]) -> dict[str, Any]:
    n = len(results)
    right = sum(r.output == g for r, g in zip(results, gold, strict=True))
    hits = sum(r.cache is not None for r in results)
    cost = sum(r.cost for r in results) / n if n else 0.0
    return {
        "accuracy": right / n if n else None,
        "correct": right,
        "cache_hits": hits,
        "cache_hit_share": hits / n if n else 0.0,
        "mean_cost": cost,
        "cost_per_1k": cost * 1000.0,
    }


async def replay_semantic(
    predict: Predict,
    semantic: SemanticCache,
    trace: Sequence[tuple[str, str]],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Answer ``trace`` with ``predict`` alone and with ``semantic`` in front of it.

    Requests are replayed in order. Each is answered once by ``predict``; the cached
    path serves a semantic hit or, on a miss, that same answer (then cached), so both
    paths see identical cascade answers and a miss costs what the cascade costs. A
    hit costs 0. A *false hit* is a hit whose output differs from the cascade's own
    output for the same request; ``false_hit_rate`` is false hits over hits (``None``
    without hits). ``semantic`` should be empty and not audit (``rate=0``), or the
    audits may raise its threshold during the replay.
    """
    alone: list[Result] = []
    cached: list[Result] = []
    false_hits = 0
    for k, (text, _gold) in enumerate(trace, start=1):
        answer = await predict(text)

        async def computed(answer: Result = answer) -> Result:
            return answer

        served = await semantic.get_or_compute(text, computed)
        alone.append(answer)
        cached.append(served)
        if served.cache is not None and served.output != answer.output:
            false_hits += 1
        if progress:
            progress(k, len(trace))
    await semantic.drain()
    gold = [g for _, g in trace]
    base, with_cache = _mode(alone, gold), _mode(cached, gold)
    hits = with_cache["cache_hits"]
    with_cache["false_hits"] = false_hits
    with_cache["false_hit_rate"] = false_hits / hits if hits else None
    base["false_hits"], base["false_hit_rate"] = 0, None
    acc0, acc1 = base["accuracy"], with_cache["accuracy"]
    return {
        "n": len(trace),
        "threshold": semantic.threshold,
        "cascade": base,
        "semantic": with_cache,
        "accuracy_change": acc1 - acc0 if acc0 is not None and acc1 is not None else None,
        "cost_ratio": (
            with_cache["mean_cost"] / base["mean_cost"] if base["mean_cost"] > 0 else None
        ),
    }


def semantic_replay_config(
    config: ServiceConfig, threshold: float | None = None
) -> ServiceConfig | None:
    """The config to replay with: exact cache off, semantic cache on without audits.

    ``threshold`` overrides the configured threshold or calibration. ``None`` when
    neither ``threshold`` is given nor the config enables the semantic cache.
    """
    sc = config.cache.semantic
    if threshold is None and not sc.enabled:
        return None
    update: dict[str, Any] = {"enabled": True, "audit_rate": 0.0}
    if threshold is not None:
        update["threshold"] = threshold
    cache = config.cache.model_copy(
        update={
            "exact": config.cache.exact.model_copy(update={"enabled": False}),
            "semantic": sc.model_copy(update=update),
        }
    )
    return config.model_copy(update={"cache": cache})


async def replay_service(
    service: Service,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    n: int,
    repeat_ratio: float = 0.2,
    paraphrase_ratio: float = 0.2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """:func:`replay_semantic` on a trace of the data, with ``service``'s own semantic
    cache (built from :func:`semantic_replay_config`) in front of its cascade.

    Empties the semantic cache afterwards.
    """
    semantic = service.caches.semantic
    if semantic is None:
        raise ValueError("the service has no semantic cache: use semantic_replay_config")
    trace = build_trace(
        texts, labels, n=n, repeat_ratio=repeat_ratio, paraphrase_ratio=paraphrase_ratio,
        seed=seed,
    )  # fmt: skip

    async def cascade_alone(text: str) -> Result:
        (result,) = await service.cascade.run([text], service.clock() + _REPLAY_DEADLINE_S)
        return result

    try:
        out = await replay_semantic(cascade_alone, semantic, trace, progress=progress)
    finally:
        await semantic.aclose()
    fresh, repeats, paraphrases = trace_counts(n, repeat_ratio, paraphrase_ratio)
    out["trace"] = {"fresh": fresh, "repeats": repeats, "paraphrases": paraphrases, "seed": seed}
    return out
