"""Caches that cannot lie: exact and semantic, in process or on Redis.

- :class:`ExactCache` — whole answers by normalised input under a version namespace,
  with single-flight; stores: :class:`MemoryStore`, :class:`RedisStore`,
  :class:`LayeredStore` (memory in front of Redis).
- :class:`SemanticCache` — nearest cached input by sentence embedding, served above a
  calibrated similarity threshold, audited against the cascade at serve time.
- :mod:`tiergate.cache.calibrate` / :mod:`tiergate.cache.pairs` — the evaluation pairs
  and the threshold calibration with a finite-sample false-hit guarantee.
"""

from __future__ import annotations

from tiergate.cache.audit import AuditPolicy, FalseHitMonitor, false_hit_bounds
from tiergate.cache.calibrate import (
    SEMANTIC_FORMAT,
    SemanticCalibration,
    calibrate_semantic_cache,
    calibrate_threshold,
    cascade_answers,
    evaluate_threshold,
    score_pairs,
)
from tiergate.cache.exact import ExactCache, make_namespace, normalise_text
from tiergate.cache.index import Match, NumpyIndex, VectorIndex
from tiergate.cache.metrics import CacheMetrics, NullCacheMetrics, PrometheusCacheMetrics
from tiergate.cache.minilm import (
    MINILM_PACKAGES,
    MemoEmbedder,
    load_minilm_embedder,
    minilm_files,
    shared_minilm_embedder,
)
from tiergate.cache.pairs import (
    Pair,
    build_pair_file,
    build_pairs,
    neighbour_pairs,
    read_pairs,
    write_pairs,
)
from tiergate.cache.semantic import Embedder, SemanticCache, SemanticLookup
from tiergate.cache.store import CacheStore, LayeredStore, MemoryStore, RedisStore

__all__ = [
    "MINILM_PACKAGES",
    "SEMANTIC_FORMAT",
    "AuditPolicy",
    "CacheMetrics",
    "CacheStore",
    "Embedder",
    "ExactCache",
    "FalseHitMonitor",
    "LayeredStore",
    "Match",
    "MemoEmbedder",
    "MemoryStore",
    "NullCacheMetrics",
    "NumpyIndex",
    "Pair",
    "PrometheusCacheMetrics",
    "RedisStore",
    "SemanticCache",
    "SemanticCalibration",
    "SemanticLookup",
    "VectorIndex",
    "build_pair_file",
    "build_pairs",
    "calibrate_semantic_cache",
    "calibrate_threshold",
    "cascade_answers",
    "evaluate_threshold",
    "false_hit_bounds",
    "load_minilm_embedder",
    "make_namespace",
    "minilm_files",
    "neighbour_pairs",
    "normalise_text",
    "read_pairs",
    "score_pairs",
    "shared_minilm_embedder",
    "write_pairs",
]
