"""`tiergate evaluate`: report files, consistent numbers, baselines and the oracle gap."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiergate.calibration import cascade_outcome
from tiergate.errors import ConfigError
from tiergate.evaluation import evaluate_config, routing_curves
from tiergate.evaluation.plots import require_report_deps
from tiergate.offline import calibrate_config
from tiergate.testing import keyword_sentiment

# The accurate tier understands negation and two words the fast tier does not know.
ACCURATE_MODULE = """
import re
import numpy as np

POS = set("good great gorgeous moving brilliant wonderful fun best love enjoyable".split())
NEG = set("bad awful boring dull worst mess flat tedious hate tiresome".split())


def accurate(texts):
    rows = []
    for text in texts:
        words = re.findall(r"[a-z]+", text.lower())
        score = 0
        for i, w in enumerate(words):
            s = (w in POS) - (w in NEG)
            score += -s if i and words[i - 1] == "not" else s
        p = 1.0 / (1.0 + np.exp(-1.2 * score))
        rows.append((1.0 - p, p))
    return np.array(rows, dtype=float).reshape(len(texts), 2)
"""

CONFIG = """
service: eval-test
tiers:
  - name: fast
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment",
             labels: [negative, positive]}}
    cost_per_call: 1.0
    threshold: 0.8
  - name: accurate
    model: {{kind: callable, target: "{accurate}", labels: [negative, positive]}}
    cost_per_call: 10.0
{extra}"""

PLOTS = ("accuracy_vs_escalation", "accuracy_vs_cost", "reliability", "latency", "confusion_matrix")


def make_data(n: int = 240, seed: int = 1) -> list[tuple[str, str]]:
    """Easy, negated and mixed snippets, with 5 % label noise."""
    rng = np.random.default_rng(seed)
    pos, neg = ["good", "great", "moving", "fun"], ["bad", "dull", "boring", "flat"]
    rows = []
    for _ in range(n):
        kind = rng.integers(5)
        p, q = str(rng.choice(pos)), str(rng.choice(neg))
        if kind == 0:
            text, label = f"a {p} film", "positive"
        elif kind == 1:
            text, label = f"a {q} film", "negative"
        elif kind == 2:
            text, label = f"the plot is not {p}", "negative"
        elif kind == 3:
            text, label = f"it is {p} and {q} but enjoyable", "positive"
        else:
            text, label = f"it is {p} and {q} and tiresome", "negative"
        if rng.uniform() < 0.05:
            label = "positive" if label == "negative" else "negative"
        rows.append((text, label))
    return rows


def write_setup(d: Path, accurate: str, extra: str = "") -> tuple[Path, Path]:
    data = d / "test.jsonl"
    data.write_text("".join(json.dumps({"input": t, "label": y}) + "\n" for t, y in make_data()))
    config = d / "config.yaml"
    config.write_text(CONFIG.format(accurate=accurate, extra=extra))
    return config, data


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    d = tmp_path_factory.mktemp("eval")
    (d / "tg_eval_models.py").write_text(ACCURATE_MODULE)
    config, data = write_setup(d, "tg_eval_models:accurate")
    stages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(d))
        report = evaluate_config(
            config, data, report_dir=d / "report", progress=lambda s, i, n: stages.append(s)
        )
        sys.modules.pop("tg_eval_models", None)
    assert {"score fast", "score accurate", "latency fast", "report"} <= set(stages)
    yield report, d


def test_writes_json_html_and_every_plot(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, d = evaluated
    out = d / "report"
    assert json.loads((out / "report.json").read_text()) == report
    for name in PLOTS:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert report["plots"][name] == png.name
    assert report["service"] == "eval-test"
    assert report["data"]["n"] == 240 and len(report["data"]["sha256"]) == 64
    assert report["calibration_version"] is None


def test_operating_point_matches_a_hand_replay(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, d = evaluated
    rows = make_data()
    texts = [t for t, _ in rows]
    y = np.array([lab == "positive" for _, lab in rows])
    sys.path.insert(0, str(d))
    try:
        from tg_eval_models import accurate  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("tg_eval_models", None)
    fast_p, acc_p = keyword_sentiment(texts), accurate(texts)
    keep = fast_p.max(axis=1) >= 0.8
    pred = np.where(keep, fast_p.argmax(axis=1), acc_p.argmax(axis=1)) == 1
    op = report["operating_point"]
    assert op["accuracy"] == pytest.approx(float((pred == y).mean()))
    assert op["escalation_rate"] == pytest.approx(float((~keep).mean()))
    assert op["tier_shares"] == pytest.approx({"fast": keep.mean(), "accurate": 1 - keep.mean()})
    assert op["mean_cost"] == pytest.approx(1.0 + 10.0 * (~keep).mean())
    assert op["cost_vs_always_last"] == pytest.approx(op["mean_cost"] / 10.0)
    cm = np.array(op["confusion_matrix"])
    assert cm.sum() == len(rows) and np.trace(cm) == round(op["accuracy"] * len(rows))
    assert cm[1].sum() == y.sum()  # rows are true labels
    fast_acc = float(((fast_p.argmax(axis=1) == 1) == y).mean())
    assert report["tiers"][0]["accuracy"] == pytest.approx(fast_acc)


def test_baselines_and_curve_are_consistent(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, _ = evaluated
    op, base, curve = report["operating_point"], report["baselines"], report["curve"]
    fast, acc = report["tiers"][0]["accuracy"], report["tiers"][1]["accuracy"]
    assert base["always_first"]["escalation_rate"] == 0.0
    assert base["always_last"]["escalation_rate"] == 1.0
    assert base["always_first"]["accuracy"] == fast and base["always_last"]["accuracy"] == acc
    r = op["escalation_rate"]
    assert base["random"]["accuracy"] == pytest.approx((1 - r) * fast + r * acc)
    assert base["oracle"]["escalation_rate"] == pytest.approx(1 - fast)
    assert base["oracle"]["accuracy"] >= max(fast, acc)

    points = curve["points"]
    rates = [p["escalation_rate"] for p in points]
    assert rates == sorted(rates) and len(set(rates)) == len(rates)
    assert rates[0] == 0.0 and rates[-1] == 1.0
    assert points[0]["accuracy"] == fast and points[-1]["accuracy"] == acc
    assert points[0]["gap_to_random"] == 0.0 == points[-1]["gap_to_random"]
    for p in points:
        assert p["oracle_accuracy"] >= p["accuracy"]
        assert p["gap_to_random"] == pytest.approx(p["accuracy"] - p["random_accuracy"])
    # The minimum gap is over the interior: at both ends the routers coincide.
    assert min(p["gap_to_random"] for p in points[1:-1]) == curve["min_gap_to_random"]
    # The operating point lies on the curve; the oracle bounds it; its gap is reported.
    on_curve = [p for p in points if p["escalation_rate"] == pytest.approx(r)]
    assert on_curve and on_curve[0]["accuracy"] == pytest.approx(op["accuracy"])
    assert op["oracle_accuracy_at_same_escalation"] >= op["accuracy"]
    assert op["gap_to_oracle"] == pytest.approx(
        op["oracle_accuracy_at_same_escalation"] - op["accuracy"]
    )
    assert op["gap_to_oracle"] > 0  # "not good" fools the fast tier confidently
    assert curve["above_random_everywhere"] == (curve["points_below_random"] == 0)


def test_html_states_the_oracle_gap(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, d = evaluated
    html = (d / "report" / "report.html").read_text()
    gap = f"{100 * report['operating_point']['gap_to_oracle']:.1f} points above the cascade"
    assert "Gap to the oracle" in html and gap in html
    assert "random routing" in html
    assert html.count("data:image/png;base64,") == len(PLOTS)
    assert any("random routing" in s for s in report["summary"])


def test_uses_calibrated_temperatures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tg_eval_models2.py").write_text(ACCURATE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config, data = write_setup(tmp_path, "tg_eval_models2:accurate")
    art = calibrate_config(
        config, data, target_accuracy=0.6, confidence=0.9, out=tmp_path / "calibration.json"
    )
    text = config.read_text().replace("    threshold: 0.8\n", "")
    config.write_text(text + "calibration: calibration.json\n")
    report = evaluate_config(config, data, report_dir=tmp_path / "out")
    sys.modules.pop("tg_eval_models2", None)
    assert report["calibration_version"] == art["version"]
    for tier in report["tiers"]:
        assert tier["temperature"] == pytest.approx(art["temperatures"][tier["name"]])
    assert report["operating_point"]["thresholds"]["fast"] == pytest.approx(
        art["thresholds"]["fast"]
    )


def test_identical_tiers_give_zero_gaps(tmp_path: Path) -> None:
    config, data = write_setup(tmp_path, "tiergate.testing:keyword_sentiment")
    report = evaluate_config(config, data, report_dir=tmp_path / "out")
    op = report["operating_point"]
    assert op["gap_to_oracle"] == 0.0 and op["gap_to_random"] == pytest.approx(0.0)
    assert report["curve"]["min_gap_to_random"] == 0.0
    assert report["curve"]["above_random_everywhere"]


def test_single_tier_config_is_rejected(tmp_path: Path) -> None:
    config, data = write_setup(tmp_path, "tiergate.testing:keyword_sentiment")
    single = config.read_text().split("  - name: accurate")[0]
    config.write_text(single)
    with pytest.raises(ConfigError, match="at least two tiers"):
        evaluate_config(config, data, report_dir=tmp_path / "out")


def test_missing_report_extra_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ConfigError, match=r"pip install 'tiergate\[report\]'"):
        require_report_deps()


def test_routing_curves_match_the_cascade_replay() -> None:
    rng = np.random.default_rng(3)
    n = 500
    conf0 = np.round(rng.uniform(0.5, 1.0, n), 2)  # ties on purpose
    ok0 = rng.uniform(size=n) < conf0
    rest_ok = rng.uniform(size=n) < 0.9
    out = routing_curves(conf0, ok0, rest_ok, np.full(n, 10.0), 1.0)
    conf1 = np.ones(n)
    for p in out["curve"]["points"]:
        o = cascade_outcome([conf0, conf1], [ok0, rest_ok], [1.0, 10.0], [p["threshold"]])
        assert p["escalation_rate"] == pytest.approx(o.escalation_rate)
        assert p["accuracy"] == pytest.approx(o.accuracy)
        assert p["mean_cost"] == pytest.approx(float(o.cost.mean()))
    oracle = out["oracle_point"]
    assert oracle["escalation_rate"] == pytest.approx(1 - ok0.mean())
    assert oracle["accuracy"] == pytest.approx((ok0 | rest_ok).mean())
    accs = [p["accuracy"] for p in out["oracle_curve"]]
    assert max(accs) == pytest.approx(oracle["accuracy"])


THREE_TIERS = """
service: eval-test-3
tiers:
  - name: fast
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment",
             labels: [negative, positive]}}
    cost_per_call: 1.0
    threshold: 0.8
  - name: middle
    model: {{kind: callable, target: "{accurate}", labels: [negative, positive]}}
    cost_per_call: 2.0
    threshold: 0.7
  - name: accurate
    model: {{kind: callable, target: "{accurate}", labels: [negative, positive]}}
    cost_per_call: 10.0
"""


def test_compare_puts_configs_side_by_side_and_scores_shared_tiers_once(tmp_path: Path) -> None:
    (tmp_path / "tg_eval_cmp.py").write_text(ACCURATE_MODULE)
    config, data = write_setup(tmp_path, "tg_eval_cmp:accurate")
    three = tmp_path / "three.yaml"
    three.write_text(THREE_TIERS.format(accurate="tg_eval_cmp:accurate"))
    stages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        report = evaluate_config(
            config, data, report_dir=tmp_path / "out", compare=[three],
            progress=lambda s, i, n: stages.append(s),
        )  # fmt: skip
        sys.modules.pop("tg_eval_cmp", None)
    two_row, three_row = report["comparison"]
    op = report["operating_point"]
    assert two_row["accuracy"] == op["accuracy"] and two_row["tiers"] == ["fast", "accurate"]
    assert two_row["cost_vs_always_last"] == pytest.approx(op["mean_cost"] / 10.0)
    # The three-tier row, replayed by hand: fast keeps >= 0.8, middle >= 0.7, the rest go on.
    texts, labels = zip(*make_data(), strict=True)
    from tiergate.testing import keyword_sentiment

    sys.path.insert(0, str(tmp_path))
    try:
        import tg_eval_cmp
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tg_eval_cmp", None)
    pf, pa = keyword_sentiment(list(texts)), tg_eval_cmp.accurate(list(texts))
    y = np.array([lab == "positive" for lab in labels])
    first = pf.max(1) >= 0.8
    second = ~first & (pa.max(1) >= 0.7)
    right = np.where(first, pf.argmax(1) == y, pa.argmax(1) == y)
    cost = 1.0 + 2.0 * ~first + 10.0 * (~first & ~second)
    assert three_row["tiers"] == ["fast", "middle", "accurate"]
    assert three_row["accuracy"] == pytest.approx(right.mean())
    assert three_row["cost_per_1k"] == pytest.approx(1000 * cost.mean())
    assert three_row["tier_shares"] == pytest.approx(
        {"fast": first.mean(), "middle": second.mean(), "accurate": (~first & ~second).mean()}
    )
    assert three_row["reaching_last"] == three_row["tier_shares"]["accurate"]
    assert three_row["any_tier_right"] >= max(three_row["accuracy"], two_row["accuracy"])
    # middle and accurate run the same model: one version, scored once for both configs
    calls = stages.count("latency fast")  # one progress tick per timed call
    assert calls > 0 and stages.count("latency accurate") == calls
    assert not any("middle" in s for s in stages)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Configs side by side" in html and "fast → middle → accurate" in html
    assert any("three.yaml (fast → middle → accurate)" in line for line in report["summary"])
