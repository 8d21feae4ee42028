"""Cascade economics on the demo: a middle tier and a learned deferral rule, measured.

The groundwork for a three-tier demo (NB → middle → MPNet int8): which middle tier, and
whether a learned deferral rule beats max-probability thresholds, on the demo's own splits.
Everything is trained on the training split only (the NB tier's log-probabilities enter
the stacked middle tier and the deferral rule out of fold); thresholds are chosen on the
calibration split; numbers are reported on the test split.

* **costs**: CPU time per text at batch 1 (``time.process_time``, median of 5 passes
  over 200 test texts), the unit the demo's tiers are priced in;
* **middle**: candidates for tier 2: a logistic regression on MiniLM-L3 int8 embeddings
  (the semantic cache's embedder, shipped in the package), alone and stacked with NB's
  out-of-fold log-probabilities;
* **deferral**: NB → MPNet with escalation ordered by NB's max probability vs by a
  learned score (gradient-boosted trees on cheap features NB already has: max
  probability, margin, length, out-of-vocabulary share), trained out of fold on train to
  predict "NB is wrong"; compared at equal escalation rates on test;
* **cascades**: two-tier (NB → MPNet) and three-tier (NB → middle → MPNet) with
  thresholds chosen on calibration as the cheapest meeting 99.5 % of MPNet's calibration
  accuracy (an empirical choice, not the learn-then-test certificate `calibrate` gives),
  then test accuracy, shares, cost relative to always-MPNet. Once more with the middle
  priced at its head only (``*_embedding_shared*``): with the semantic cache on, every
  request is embedded by the same MiniLM anyway, so a middle tier that shares that
  embedding adds only its logistic regression.

    .venv/bin/python bench/economics.py   # → bench/results/economics.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from tiergate.cache import load_minilm_embedder
from tiergate.config import tiergate_home
from tiergate.demo.data import SPLIT_NAMES, read_jsonl
from tiergate.demo.train import embed_corpus
from tiergate.models.onnx import OnnxSentenceEmbedder

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "economics.json"
SEED = 0


def cpu_ms_per_text(fn: Any, texts: list[str]) -> float:
    runs = []
    for _ in range(5):
        t0 = time.process_time()
        for t in texts:
            fn([t])
        runs.append((time.process_time() - t0) * 1000 / len(texts))
    return round(statistics.median(runs), 4)


def cheap_features(fast: Any, texts: list[str], proba: np.ndarray) -> np.ndarray:
    """What the NB tier already has: max probability, margin, length, OOV share."""
    top = np.sort(proba, axis=1)
    analyzer = fast.named_steps["features"].build_analyzer()
    vocab = fast.named_steps["features"].vocabulary_
    lengths, oov = [], []
    for t in texts:
        toks = [g for g in analyzer(t) if " " not in g]  # unigrams
        lengths.append(len(toks))
        oov.append(sum(1 for g in toks if g not in vocab) / max(1, len(toks)))
    return np.column_stack([top[:, -1], top[:, -1] - top[:, -2], np.log1p(lengths), oov])


def deferral_curve(order_score: np.ndarray, first_ok: np.ndarray, last_ok: np.ndarray,
                   rates: list[float]) -> list[float]:  # fmt: skip
    """Two-tier accuracy when the ``rate`` share with the lowest score escalates."""
    order = np.argsort(order_score, kind="stable")
    n = len(order)
    out = []
    for r in rates:
        k = round(r * n)
        esc = np.zeros(n, dtype=bool)
        esc[order[:k]] = True
        out.append(float(np.where(esc, last_ok, first_ok).mean()))
    return out


def cascade(confs: list[np.ndarray], oks: list[np.ndarray], thresholds: list[float],
            costs: list[float]) -> dict[str, Any]:  # fmt: skip
    """Tier i < k answers when ``confs[i] >= thresholds[i]``; the last (``oks[k]``) the rest."""
    n = len(oks[0])
    open_ = np.ones(n, dtype=bool)
    ok = np.zeros(n, dtype=bool)
    cost = np.zeros(n)
    shares = []
    for i, good in enumerate(oks):
        cost[open_] += costs[i]
        answer = open_ & (confs[i] >= thresholds[i]) if i < len(confs) else open_.copy()
        ok[answer] = good[answer]
        shares.append(float(answer.mean()))
        open_ &= ~answer
    return {"accuracy": float(ok.mean()), "mean_cost": float(cost.mean()), "shares": shares}


def sweep(confs: list[np.ndarray], oks: list[np.ndarray], costs: list[float],
          grids: list[np.ndarray]) -> list[tuple[list[float], dict[str, Any]]]:  # fmt: skip
    """The cascade at every combination of thresholds from ``grids``."""
    combos = np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(grids), -1).T
    return [(th.tolist(), cascade(confs, oks, th.tolist(), costs)) for th in combos]


def choose(points: list[tuple[list[float], dict[str, Any]]], target: float) -> list[float]:
    """The cheapest thresholds that meet ``target`` (none: every tier but the last off)."""
    fit = [(r["mean_cost"], th) for th, r in points if r["accuracy"] >= target]
    return min(fit)[1] if fit else [1.01] * len(points[0][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=tiergate_home() / "demo")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    demo = args.demo
    if not (demo / "manifest.json").is_file():
        sys.exit(f"no built demo at {demo}: run `tiergate demo build` first")
    t_start = time.perf_counter()
    data = {s: read_jsonl(demo / "data" / f"{s}.jsonl") for s in SPLIT_NAMES}
    texts = {s: list(data[s][0]) for s in SPLIT_NAMES}
    y = {s: np.asarray(data[s][1]) for s in SPLIT_NAMES}

    fast = joblib.load(demo / "fast.joblib")
    classes = fast.classes_
    nb = {s: fast.predict_proba(texts[s]) for s in SPLIT_NAMES}
    cv = StratifiedKFold(5, shuffle=True, random_state=SEED)
    nb_oof = cross_val_predict(clone(fast), texts["train"], y["train"], cv=cv,
                               method="predict_proba")  # fmt: skip

    head = joblib.load(demo / "accurate-head.joblib")
    with np.load(demo / "embeddings-int8.npz") as npz:
        mp = {s: head.predict_proba(np.asarray(npz[s], dtype=np.float32)) for s in SPLIT_NAMES}

    minilm = load_minilm_embedder(tiergate_home() / "minilm")
    t0 = time.perf_counter()
    mini = {s: embed_corpus(minilm, texts[s]) for s in SPLIT_NAMES}
    embed_s = time.perf_counter() - t0

    def stack(emb: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.hstack([emb, np.log(np.clip(p, 1e-6, 1.0))])

    # Distillation targets: half the true label, half MPNet's out-of-fold probabilities
    # on train (its head was fitted on train, so in-sample ones would be overconfident).
    with np.load(demo / "embeddings-int8.npz") as npz:
        mp_train_emb = np.asarray(npz["train"], dtype=np.float32)
    mp_oof = cross_val_predict(LogisticRegression(C=head.C, max_iter=5000), mp_train_emb,
                               y["train"], cv=cv, method="predict_proba")  # fmt: skip
    onehot = (y["train"][:, None] == classes[None, :]).astype(float)
    soft_train = 0.5 * onehot + 0.5 * mp_oof

    def fit(x: np.ndarray, yy: np.ndarray, c: float, soft: np.ndarray | None) -> Any:
        lr = LogisticRegression(C=c, max_iter=5000)
        if soft is None:
            return lr.fit(x, yy)
        k = len(classes)  # one weighted copy of every row per class
        return lr.fit(np.vstack([x] * k), np.repeat(classes, len(x)), sample_weight=soft.T.ravel())

    stacked_feats = {
        "train": stack(mini["train"], nb_oof),
        **{s: stack(mini[s], nb[s]) for s in ("calibration", "test")},
    }
    middles: dict[str, dict[str, Any]] = {}
    for name, feats, soft in (
        ("minilm_lr", {s: mini[s] for s in SPLIT_NAMES}, None),
        ("minilm_nb_stacked", stacked_feats, None),
        ("minilm_nb_stacked_distilled", stacked_feats, soft_train),
    ):
        scores = {}
        for c in (0.3, 1.0, 3.0, 10.0):
            right = 0
            for tr, va in cv.split(feats["train"], y["train"]):
                m = fit(feats["train"][tr], y["train"][tr], c, None if soft is None else soft[tr])
                right += int((m.predict(feats["train"][va]) == y["train"][va]).sum())
            scores[c] = right / len(y["train"])
        c_best = max(scores, key=lambda c: scores[c])
        model = fit(feats["train"], y["train"], c_best, soft)
        middles[name] = {
            "C": c_best, "cv_accuracy_by_C": scores, "model": model, "feats": feats,
            "test_accuracy": float((model.predict(feats["test"]) == y["test"]).mean()),
        }  # fmt: skip
    # Chosen by cross-validated accuracy on train (never by test).
    mid_name = max(middles, key=lambda k: max(middles[k]["cv_accuracy_by_C"].values()))
    mid = middles[mid_name]
    mid_p = {s: mid["model"].predict_proba(mid["feats"][s]) for s in ("calibration", "test")}

    # Costs: CPU per text at batch 1.
    sample = texts["test"][:200]
    mp_embedder = OnnxSentenceEmbedder(demo / "mpnet-int8.onnx", demo / "tokenizer.json",
                                       max_length=128)  # fmt: skip
    c_nb = cpu_ms_per_text(fast.predict_proba, sample)
    # The middle tier reuses the first tier's probabilities: its cost is the embedding and
    # its own head only.
    nb_of = {t: fast.predict_proba([t]) for t in sample}

    def middle_call(t: list[str]) -> Any:
        emb = minilm.embed(t)
        return mid["model"].predict_proba(stack(emb, nb_of[t[0]]) if stacked else emb)

    stacked = "stacked" in mid_name
    c_minilm = cpu_ms_per_text(middle_call, sample)
    c_mpnet = cpu_ms_per_text(lambda t: head.predict_proba(mp_embedder.embed(t)), sample[:50])
    # With the semantic cache on, every request is embedded by the cache's MiniLM anyway;
    # a middle tier sharing that embedding pays only its head (embedding precomputed here).
    emb_of = {t: minilm.embed([t]) for t in sample}

    def middle_head(t: list[str]) -> Any:
        emb = emb_of[t[0]]
        return mid["model"].predict_proba(stack(emb, nb_of[t[0]]) if stacked else emb)

    c_head = cpu_ms_per_text(middle_head, sample)
    costs = {"fast_nb": c_nb, "middle": c_minilm, "middle_head_only": c_head,
             "mpnet_int8": c_mpnet}  # fmt: skip

    # Deferral: learned rule vs max probability (NB → MPNet), at equal escalation rates.
    nb_oof_ok = nb_oof.argmax(1) == np.searchsorted(classes, y["train"])
    f_train = cheap_features(fast, texts["train"], nb_oof)
    rule = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05,
                                          random_state=SEED).fit(f_train, nb_oof_ok)  # fmt: skip
    ok = {s: {"nb": nb[s].argmax(1) == np.searchsorted(classes, y[s]),
              "mp": mp[s].argmax(1) == np.searchsorted(classes, y[s])}
          for s in ("calibration", "test")}  # fmt: skip
    ok_mid = {s: mid_p[s].argmax(1) == np.searchsorted(classes, y[s]) for s in mid_p}
    rates = [0.1, 0.2, 0.3, 0.4, 0.5]
    learned = rule.predict_proba(cheap_features(fast, texts["test"], nb["test"]))[:, 1]
    maxprob = nb["test"].max(1)
    curve_max = deferral_curve(maxprob, ok["test"]["nb"], ok["test"]["mp"], rates)
    curve_learned = deferral_curve(learned, ok["test"]["nb"], ok["test"]["mp"], rates)

    # Cascades: thresholds on calibration, reported on test.
    target = 0.995 * float(ok["calibration"]["mp"].mean())
    grid = np.round(np.arange(0.5, 1.0001, 0.005), 4)
    two_costs = [c_nb, c_mpnet]
    three_costs = [c_nb, c_minilm, c_mpnet]
    cal_nb, cal_mid = nb["calibration"].max(1), mid_p["calibration"].max(1)
    grid3 = np.round(np.arange(0.5, 1.0001, 0.01), 3)
    cal_oks2 = [ok["calibration"]["nb"], ok["calibration"]["mp"]]
    cal_oks3 = [ok["calibration"]["nb"], ok_mid["calibration"], ok["calibration"]["mp"]]
    points2 = sweep([cal_nb], cal_oks2, two_costs, [grid])
    points3 = sweep([cal_nb, cal_mid], cal_oks3, three_costs, [grid3, grid3])
    shared_costs = [c_nb, c_head, c_mpnet]
    points3s = sweep([cal_nb, cal_mid], cal_oks3, shared_costs, [grid3, grid3])
    th2, th3 = choose(points2, target), choose(points3, target)
    th3s = choose(points3s, target)
    always_mp = float(ok["test"]["mp"].mean())
    two = cascade([maxprob], [ok["test"]["nb"], ok["test"]["mp"]], th2, two_costs)
    three = cascade([maxprob, mid_p["test"].max(1)],
                    [ok["test"]["nb"], ok_mid["test"], ok["test"]["mp"]], th3,
                    three_costs)  # fmt: skip
    three_shared = cascade([maxprob, mid_p["test"].max(1)],
                           [ok["test"]["nb"], ok_mid["test"], ok["test"]["mp"]], th3s,
                           shared_costs)  # fmt: skip
    for r, th in ((two, th2), (three, th3), (three_shared, th3s)):
        r.update(
            thresholds=th,
            accuracy_vs_always_last=r["accuracy"] / always_mp,
            cost_vs_always_last=r["mean_cost"] / c_mpnet,
            reaching_last=r["shares"][-1],
        )

    # The cost/accuracy frontier on calibration: the cheapest cascade at each accuracy.
    def frontier(points: list[tuple[list[float], dict[str, Any]]]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for share in (0.97, 0.98, 0.99, 0.995, 1.0):
            level = share * float(ok["calibration"]["mp"].mean())
            fit = [r["mean_cost"] for _, r in points if r["accuracy"] >= level]
            out[f"{share:.3f}"] = round(min(fit) / c_mpnet, 4) if fit else None
        return out

    frontiers = {"two_tier": frontier(points2), "three_tier": frontier(points3),
                 "three_tier_embedding_shared_with_cache": frontier(points3s)}  # fmt: skip

    out = {
        "cost_vs_always_last_at_share_of_mpnet_calibration_accuracy": frontiers,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "demo": str(demo),
        "splits": {s: len(texts[s]) for s in SPLIT_NAMES},
        "test_accuracy": {
            "fast_nb": float(ok["test"]["nb"].mean()),
            "mpnet_int8": always_mp,
            **{k: v["test_accuracy"] for k, v in middles.items()},
        },
        "middle": {
            k: {"C": v["C"], "cv_accuracy_by_C": v["cv_accuracy_by_C"]} for k, v in middles.items()
        }
        | {"chosen": mid_name},
        "minilm_embed_ms_per_text_batched": round(
            embed_s * 1000 / sum(map(len, texts.values())), 3
        ),
        "cpu_ms_per_text_batch1": costs,
        "deferral_nb_to_mpnet_test": {
            "escalation_rates": rates,
            "max_probability": curve_max,
            "learned": curve_learned,
            "learned_minus_max_points": [
                round(100 * (b - a), 2) for a, b in zip(curve_max, curve_learned, strict=True)
            ],
        },
        "calibration_target": target,
        "two_tier_test": two,
        "three_tier_test": three,
        # the middle priced at its head only: its embedding is the semantic cache's
        "three_tier_embedding_shared_test": three_shared,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps({k: v for k, v in out.items() if k != "middle"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
