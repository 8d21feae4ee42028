"""How the ONNX embedder splits a batch into calls of similar token length."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tiergate.models.onnx import _length_groups


def cost(lengths: np.ndarray, groups: list[np.ndarray], call: float) -> float:
    return sum(call + len(g) * lengths[g].max() for g in groups)


def test_similar_lengths_share_a_call_and_outliers_do_not() -> None:
    lengths = np.array([30, 5, 6, 31, 5, 80, 7])
    groups = [sorted(g.tolist()) for g in _length_groups(lengths, call_tokens=10)]
    assert groups == [[1, 2, 4, 6], [0, 3], [5]]
    assert len(_length_groups(lengths, call_tokens=1000)) == 1  # calls dear: one batch
    assert len(_length_groups(lengths, call_tokens=0)) == 6  # calls free: no padding at all


@given(st.lists(st.integers(1, 128), min_size=1, max_size=7), st.floats(0, 64))
def test_the_split_is_optimal_and_covers_every_text_once(raw: list[int], call: float) -> None:
    lengths = np.array(raw)
    groups = _length_groups(lengths, call_tokens=call)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(raw)))
    # brute force over every split of the length-sorted order into contiguous runs
    order = np.argsort(lengths, kind="stable")
    best = min(
        cost(lengths, [order[a:b] for a, b in itertools.pairwise((0, *cuts, len(raw)))], call)
        for k in range(len(raw))
        for cuts in itertools.combinations(range(1, len(raw)), k)
    )
    assert cost(lengths, groups, call) <= best + 1e-9
