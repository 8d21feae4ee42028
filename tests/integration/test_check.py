"""`tiergate check`: evaluate + real load against a served config, judged against its SLOs.

Both tiers are :func:`tiergate.testing:keyword_sentiment` (a deterministic callable), so
a run costs seconds: the point is the wiring (evaluation, a real server in a
subprocess, open-loop load, rows, verdict, files), not model quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tiergate.errors import ConfigError
from tiergate.evaluation import check_config, render_table

pytestmark = pytest.mark.integration

CONFIG = """
service: check-test
tiers:
  - name: fast
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}}
    cost_per_call: 0.000001
    threshold: 0.9
  - name: accurate
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}}
    cost_per_call: 0.0001
# No exact cache: the served cost must equal the policy's offline cost (repeats are free).
cache: {{exact: {{enabled: false}}}}
{slo}"""

GENEROUS = "slo: {p99_ms: 2000, accuracy: 0.5, availability: 0.9, cost_per_1k: 1.0, rate: 50}"

# A margin of two keywords is certain enough for the fast tier (0.95); one keyword
# (0.82) and none (0.5) escalate: 60 % of requests. With no keyword the answer is a tie
# that argmax breaks to "negative", so 9 of 10 snippets are answered right.
SNIPPETS = [
    ("a great, gorgeous film", "positive"),
    ("wonderful and moving", "positive"),
    ("a fun film", "positive"),
    ("the best", "positive"),
    ("awful, boring mess", "negative"),
    ("dull and tedious", "negative"),
    ("a flat film", "negative"),
    ("the worst", "negative"),
    ("a film about a dog", "negative"),
    ("a film about a cat", "positive"),
]


def write_case(tmp: Path, slo: str) -> tuple[Path, Path]:
    data = tmp / "data.jsonl"
    lines = [json.dumps({"input": f"{t} #{i}", "label": y}) for i in range(6) for t, y in SNIPPETS]
    data.write_text("\n".join(lines) + "\n")
    config = tmp / "config.yaml"
    config.write_text(CONFIG.format(slo=slo))
    return config, data


def test_generous_slos_pass_and_reports_are_written(tmp_path: Path) -> None:
    messages: list[str] = []
    config, data = write_case(tmp_path, GENEROUS)
    result = check_config(
        config, data=data, report_dir=tmp_path / "report", duration_s=2.0, warmup_s=0.5,
        progress=messages.append,
    )  # fmt: skip
    assert result.passed, result.to_dict()["rows"]
    assert [r.name for r in result.rows] == ["p99_ms", "availability", "accuracy", "cost_per_1k"]
    assert all(r.passed is True for r in result.rows)
    assert result.bench["sent"] == pytest.approx(100, abs=2)
    assert result.bench["availability"] == 1.0
    assert result.evaluation["accuracy"] == pytest.approx(0.9)
    # Served cost matches the offline replay of the same policy: 60 % escalate.
    served, offline = result.bench["cost_per_1k"], result.evaluation["cost_per_1k"]
    assert offline == pytest.approx(1000 * (0.000001 + 0.6 * 0.0001))
    assert served == pytest.approx(offline, rel=0.15)
    assert any("warming up" in m for m in messages)

    report = tmp_path / "report"
    body = json.loads((report / "check.json").read_text())
    assert body["passed"] is True and body["failed"] == []
    assert body["format"] == "tiergate.check/1"
    assert body["rate"] == 50 and body["rate_from"] == "slo.rate"
    assert {r["name"]: r["status"] for r in body["rows"]} == dict.fromkeys(
        ["p99_ms", "availability", "accuracy", "cost_per_1k"], "pass"
    )
    assert body["timeline"]["points"] and body["bench"]["latency_ms"]["p99"] > 0
    html = (report / "check.html").read_text()
    assert "PASS" in html and html.count("data:image/png;base64,") == 2
    assert 'href="evaluation/report.html"' in html
    for name in ("latency_over_time.png", "latency_distribution.png", "evaluation/report.html"):
        assert (report / name).is_file()
    assert result.paths["json"] == report / "check.json"


def test_unreachable_slo_fails_its_row_and_still_measures_the_rest(tmp_path: Path) -> None:
    slo = "slo: {p99_ms: 2000, accuracy: 0.999, availability: 0.9}"
    config, data = write_case(tmp_path, slo)
    result = check_config(
        config, data=data, report_dir=tmp_path / "report", duration_s=1.5, rate=40.0, warmup_s=0.5
    )
    assert result.passed is False
    rows = {r.name: r for r in result.rows}
    assert rows["accuracy"].passed is False and rows["accuracy"].status == "fail"
    assert rows["accuracy"].measured == pytest.approx(0.9)
    assert rows["p99_ms"].passed is True and rows["availability"].passed is True
    # Not declared: measured and shown, but not judged.
    assert rows["cost_per_1k"].target is None and rows["cost_per_1k"].passed is None
    assert rows["cost_per_1k"].measured is not None
    assert [r.name for r in result.failed] == ["accuracy"]
    assert result.meta["rate_from"] == "option"

    body = json.loads((tmp_path / "report" / "check.json").read_text())
    assert body["passed"] is False and body["failed"] == ["accuracy"]
    html = (tmp_path / "report" / "check.html").read_text()
    assert "FAIL" in html and '<tr class="fail">' in html

    console = Console(record=True, width=160, color_system="truecolor")
    console.print(render_table(result))
    text = console.export_text()
    assert "FAIL" in text and "PASS" in text and "not set" in text
    assert "1 SLO(s) missed: accuracy" in text
    table = render_table(result)
    styles = {r.name: str(row.style) for r, row in zip(result.rows, table.rows, strict=True)}
    assert "red" in styles["accuracy"] and styles["p99_ms"] == "green"


def test_config_without_slo_is_an_error(tmp_path: Path) -> None:
    config, data = write_case(tmp_path, "")
    with pytest.raises(ConfigError, match="no SLO declared"):
        check_config(config, data=data, report_dir=tmp_path / "r", rate=10.0)


def test_rate_is_required_from_the_config_or_the_caller(tmp_path: Path) -> None:
    config, data = write_case(tmp_path, "slo: {p99_ms: 100}")
    with pytest.raises(ConfigError, match=r"set slo\.rate .* or pass --rate"):
        check_config(config, data=data, report_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
