"""Config validation: every mistake is a ConfigError with a readable message."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiergate.cli import app
from tiergate.config import load_config
from tiergate.errors import ConfigError

GOOD = """
service: s
tiers:
  - name: fast
    model:
      kind: callable
      target: "tiergate.testing:keyword_sentiment"
      labels: [negative, positive]
    threshold: 0.8
  - name: accurate
    model: {kind: sklearn, path: model.joblib}
"""


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.joblib").write_bytes(b"x")
    return tmp_path


def write(d: Path, text: str) -> Path:
    p = d / "config.yaml"
    p.write_text(text)
    return p


def test_good_config_resolves_paths_relative_to_file(cfg_dir: Path) -> None:
    cfg = load_config(write(cfg_dir, GOOD))
    assert cfg.tier_names == ("fast", "accurate")
    model = cfg.tiers[1].model
    assert model.kind == "sklearn" and model.path == (cfg_dir / "model.joblib").resolve()
    assert cfg.default_deadline_ms == 1000 and cfg.limits.max_batch_items == 256
    with pytest.raises(Exception, match="frozen"):
        cfg.service = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: s.replace("service: s", "service: s\nservce: x"), "servce: unknown key"),
        (lambda s: s.replace("model.joblib", "missing.joblib"), "file not found"),
        (lambda s: s.replace("threshold: 0.8", "threshold: 1.5"), "tiers.0.threshold"),
        (
            lambda s: s.replace("threshold: 0.8", "threshold: 0.8\n    batching: {policy: lifo}"),
            "tiers.0.batching.policy",
        ),
        (
            lambda s: s.replace("kind: sklearn", "kind: pytorch"),
            "does not match any of the expected tags",
        ),
        (lambda s: s.replace("name: accurate", "name: fast"), "repeated: fast"),
        (lambda s: s.replace("name: accurate", "name: Accurate Tier"), "tier names"),
        (lambda s: "service: s\ntiers: []\n", "at least 1 item"),
        (lambda s: "- just\n- a list\n", "mapping at the top level"),
        (lambda s: "service: [unclosed\n", "not valid YAML"),
    ],
)
def test_each_mistake_is_named(cfg_dir: Path, mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        load_config(write(cfg_dir, mutate(GOOD)))
    assert needle in info.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_broken_config_without_traceback(cfg_dir: Path) -> None:
    path = write(cfg_dir, GOOD.replace("service: s", "service: s\ntypo: 1"))
    result = CliRunner().invoke(app, ["serve", str(path)])
    assert result.exit_code == 2
    assert "typo: unknown key" in result.output
    assert "Traceback" not in result.output


def test_stale_calibration_is_refused(cfg_dir: Path) -> None:
    import json

    from tiergate.service import Service

    (cfg_dir / "cal.json").write_text(
        json.dumps(
            {
                "format": "tiergate.calibration/1", "version": "cal-1", "service": "s",
                "method": "m", "thresholds": {"fast": 0.9},
                "temperatures": {"fast": 1.0, "accurate": 1.0},
                "model_versions": {"fast": "old", "accurate": "old"},
            }
        )
    )  # fmt: skip
    text = (
        GOOD.replace("    threshold: 0.8\n", "").replace(
            "  - name: accurate\n    model: {kind: sklearn, path: model.joblib}",
            "  - name: accurate\n    model: {kind: callable, target: "
            '"tiergate.testing:keyword_sentiment", labels: [negative, positive]}',
        )
        + "calibration: cal.json\n"
    )
    with pytest.raises(ConfigError, match="rerun `tiergate calibrate`"):
        Service.from_config(load_config(write(cfg_dir, text)))


def test_calibrate_writes_the_artifact_its_config_names_before_it_exists(tmp_path: Path) -> None:
    # As a new user does it: config written from README (with `calibration:`), then
    # `tiergate calibrate` on it. The file it names does not exist until calibrate writes it.
    tier = ('    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", '
            "labels: [negative, positive]}\n    cost_per_call: %s\n")  # fmt: skip
    config = write(tmp_path, "service: s\ncalibration: calibration.json\ntiers:\n"
                   "  - name: fast\n" + tier % "0.0001" + "  - name: big\n" + tier % "0.01")  # fmt: skip
    words = [("a good great film", "positive"), ("bad awful dull", "negative"),
             ("great fun", "positive"), ("boring and bad", "negative")]  # fmt: skip
    data = tmp_path / "cal.jsonl"
    data.write_text("".join(f'{{"input": "{t}", "label": "{y}"}}\n' for t, y in words * 50))
    with pytest.raises(ConfigError, match="calibration: file not found"):
        load_config(config)  # serving such a config still needs the file
    res = CliRunner().invoke(
        app, ["calibrate", str(config), "--data", str(data), "--target-accuracy", "0.5"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "calibration.json").is_file()
    assert load_config(config).calibration == (tmp_path / "calibration.json").resolve()
