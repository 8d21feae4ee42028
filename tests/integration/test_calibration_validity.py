"""The calibration guarantee on the real demo data (resampling study, 200 runs).

Uses the demo's own models: the fast tier on the texts, the accurate tier's head on the
stored int8 MPNet embeddings of the same texts (what the tier computes at serve time).
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from tiergate.evaluation.validity import resampling_study
from tiergate.offline import read_labelled

pytestmark = pytest.mark.integration


def test_guarantee_holds_on_demo_data(demo_dir: Path) -> None:
    fast = joblib.load(demo_dir / "fast.joblib")
    head = joblib.load(demo_dir / "accurate-head.joblib")
    emb = np.load(demo_dir / "embeddings-int8.npz")
    probs: list[list[np.ndarray]] = [[], []]
    ys = []
    for split in ("calibration", "test"):
        texts, labels = read_labelled(demo_dir / "data" / f"{split}.jsonl")
        probs[0].append(fast.predict_proba(texts))
        probs[1].append(head.predict_proba(emb[split]))
        ys.append(np.array([list(fast.classes_).index(lab) for lab in labels]))
    study = resampling_study(
        [np.concatenate(p) for p in probs], np.concatenate(ys), [1.0, 20.0],
        n_calibration=len(ys[0]), targets=[0.80, 0.83], confidence=0.9, runs=200,
    )  # fmt: skip
    for row in study["targets"]:
        assert row["deployed"] >= 50, row  # enough deployed calibrations to test anything
        assert row["holds"], row
        assert row["coverage"] >= 0.9 - row["tolerance"]
