"""`tiergate calibrate` on a config written first, and `tiergate recalibrate` from feedback."""

from __future__ import annotations

import json
import random
from pathlib import Path

from typer.testing import CliRunner

from tiergate.artifact import read_artifact
from tiergate.cli import app

CONFIG = """
service: new-user
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: %(fast)s
  - name: big
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.001
calibration: calibration.json
"""

POS, NEG = ["good", "great", "fun", "moving"], ["bad", "dull", "flat", "mess"]


def _rows(n: int, seed: int, noise: float) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = rng.sample(POS if positive else NEG, rng.randint(1, 3))
        label = "positive" if positive else "negative"
        if rng.random() < noise:  # a label the keywords cannot know
            label = "negative" if positive else "positive"
        rows.append({"input": " ".join(words) + " film", "label": label})
    return rows


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_calibrate_writes_the_file_its_config_names(tmp_path: Path) -> None:
    # As a new user does it: the config (naming calibration.json) first, then calibrate.
    (tmp_path / "config.yaml").write_text(CONFIG % {"fast": 0.00001})
    data = _write(tmp_path / "cal.jsonl", _rows(400, 1, 0.02))
    res = CliRunner().invoke(app, ["calibrate", str(tmp_path / "config.yaml"), "--data",
                                   str(data), "--target-accuracy", "0.9"])  # fmt: skip
    assert res.exit_code == 0, res.output
    art = read_artifact(tmp_path / "calibration.json")
    monitor = art.model_extra["monitor"]  # type: ignore[index]
    assert monitor["tiers"]["fast"]["accepted"] > 0
    assert sum(monitor["tiers"]["fast"]["confidence_histogram"]) == 400
    assert "warning" not in res.output


def test_a_first_tier_dearer_than_the_next_is_said_plainly(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG % {"fast": 0.0027})
    data = _write(tmp_path / "cal.jsonl", _rows(400, 1, 0.02))
    res = CliRunner().invoke(app, ["calibrate", str(tmp_path / "config.yaml"), "--data",
                                   str(data), "--target-accuracy", "0.9"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "costs more per call" in res.output and "'big'" in res.output


def test_recalibrate_from_feedback_shows_old_and_new(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG % {"fast": 0.00001})
    data = _write(tmp_path / "cal.jsonl", _rows(400, 1, 0.02))
    runner = CliRunner()
    assert runner.invoke(app, ["calibrate", str(tmp_path / "config.yaml"), "--data", str(data),
                               "--target-accuracy", "0.9"]).exit_code == 0  # fmt: skip
    old = read_artifact(tmp_path / "calibration.json")
    # Feedback from production, plus shadow rows that must be left out by default.
    rows = [{**r, "source": "feedback"} for r in _rows(600, 2, 0.04)]
    rows += [{"input": "ignored shadow text", "label": "positive", "source": "shadow"}]
    feedback = _write(tmp_path / "feedback.jsonl", rows)
    res = runner.invoke(app, ["recalibrate", str(tmp_path / "config.yaml"), "--feedback",
                              str(feedback)])  # fmt: skip
    assert res.exit_code == 0, res.output
    new = read_artifact(tmp_path / "calibration.json")
    assert new.version != old.version
    assert new.target_accuracy == old.target_accuracy  # the running artifact's target
    body = json.loads((tmp_path / "calibration.json").read_text())
    assert body["data"]["sources"] == ["feedback"]
    distinct = {r["input"] for r in rows if r["source"] == "feedback"}
    assert body["data"]["n"] == len(distinct)
    for text in ("running", "new", old.version, new.version, "certified lower bound"):
        assert text in res.output
    bad = runner.invoke(app, ["recalibrate", str(tmp_path / "config.yaml"), "--feedback",
                              str(feedback), "--labels", "guesses"])  # fmt: skip
    assert bad.exit_code == 2
