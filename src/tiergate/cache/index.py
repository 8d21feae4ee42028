"""Nearest-neighbour indexes for the semantic cache, behind one protocol.

:class:`NumpyIndex` is exact brute force over a preallocated float32 matrix (one
matrix-vector product per query); fine up to ~100k entries of 384 dimensions. A real
ANN index (HNSW, IVF) fits behind the same :class:`VectorIndex` protocol beyond that.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from tiergate.errors import ConfigError

__all__ = ["Embeddings", "Match", "NumpyIndex", "VectorIndex"]

Embeddings = npt.NDArray[np.float32]
P = TypeVar("P")


class Match(NamedTuple, Generic[P]):
    """The best entry for one query: cosine similarity, slot, stored payload."""

    similarity: float
    slot: int
    payload: P


class VectorIndex(Protocol[P]):
    """Unit vectors with payloads; top-1 search by cosine similarity. Thread-safe."""

    def __len__(self) -> int: ...

    def add(self, vectors: Embeddings, payloads: Sequence[P]) -> int:
        """Insert; returns how many entries were evicted to make room."""
        ...

    def search(self, queries: Embeddings) -> list[Match[P] | None]:
        """Best match per query row (``None`` when the index is empty)."""
        ...

    def touch(self, slots: Sequence[int]) -> None:
        """Mark entries as used (for LRU eviction)."""
        ...

    def clear(self) -> None: ...


class NumpyIndex(Generic[P]):
    """Brute-force cosine index with bounded capacity and FIFO or LRU eviction.

    Rows live in a float32 matrix that doubles (up to ``capacity``) as it fills, so
    adding is amortised O(dim). When full, the oldest (``fifo``) or least recently
    touched (``lru``) entry is overwritten. ``dim`` is taken from the first ``add`` if
    not given.

    >>> index = NumpyIndex[str](capacity=10_000)
    >>> index.add(np.eye(2, dtype=np.float32), ["a", "b"])
    0
    >>> index.search(np.array([[0.6, 0.8]], dtype=np.float32))[0].payload
    'b'
    """

    def __init__(
        self,
        capacity: int = 100_000,
        *,
        dim: int | None = None,
        eviction: Literal["fifo", "lru"] = "lru",
        initial_rows: int = 1024,
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"capacity must be >= 1, got {capacity}", capacity=capacity)
        if eviction not in ("fifo", "lru"):
            raise ConfigError(f"eviction must be 'fifo' or 'lru', got {eviction!r}")
        self.capacity = capacity
        self.eviction = eviction
        self.evictions = 0
        self._initial = max(1, min(initial_rows, capacity))
        self._dim = dim
        self._size = 0
        self._tick = 0
        self._vecs: Embeddings = np.zeros((0, dim or 0), dtype=np.float32)
        self._used = np.zeros(0, dtype=np.int64)
        self._payloads: list[P | None] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"NumpyIndex(size={self._size}, capacity={self.capacity}, eviction={self.eviction})"

    def __len__(self) -> int:
        return self._size

    @property
    def dim(self) -> int | None:
        return self._dim

    def _grow(self, rows: int) -> None:
        assert self._dim is not None
        vecs = np.zeros((rows, self._dim), dtype=np.float32)
        used = np.zeros(rows, dtype=np.int64)
        if self._size:
            vecs[: self._size] = self._vecs[: self._size]
            used[: self._size] = self._used[: self._size]
        self._vecs, self._used = vecs, used
        self._payloads.extend([None] * (rows - len(self._payloads)))

    def add(self, vectors: Embeddings, payloads: Sequence[P]) -> int:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(payloads):
            raise ValueError(f"need (n, dim) vectors and n payloads, got {vectors.shape}")
        with self._lock:
            if self._dim is None:
                self._dim = int(vectors.shape[1])
            if vectors.shape[1] != self._dim:
                raise ValueError(f"vectors have dim {vectors.shape[1]}, index has {self._dim}")
            evicted = 0
            for vec, payload in zip(vectors, payloads, strict=True):
                if self._size < self.capacity:
                    if self._size == len(self._vecs):
                        self._grow(min(self.capacity, max(self._initial, 2 * self._size)))
                    slot = self._size
                    self._size += 1
                else:
                    slot = int(np.argmin(self._used))
                    evicted += 1
                self._tick += 1
                self._vecs[slot] = vec
                self._used[slot] = self._tick
                self._payloads[slot] = payload
            self.evictions += evicted
            return evicted

    def search(self, queries: Embeddings) -> list[Match[P] | None]:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2:
            raise ValueError(f"queries must be (n, dim), got {queries.shape}")
        with self._lock:
            if self._size == 0:
                return [None] * len(queries)
            sims = queries @ self._vecs[: self._size].T
            best = sims.argmax(axis=1)
            out: list[Match[P] | None] = []
            for row, slot in enumerate(best.tolist()):
                payload = self._payloads[slot]
                assert payload is not None
                out.append(Match(float(sims[row, slot]), slot, payload))
            return out

    def touch(self, slots: Sequence[int]) -> None:
        if self.eviction != "lru" or not slots:
            return
        with self._lock:
            for slot in slots:
                self._tick += 1
                self._used[slot] = self._tick

    def clear(self) -> None:
        with self._lock:
            self._size = 0
            self._payloads = [None] * len(self._payloads)
