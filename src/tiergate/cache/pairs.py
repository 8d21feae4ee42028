"""Evaluation pairs for the semantic cache: (query, cached reference) from real snippets.

Two sources, both deterministic for a seed:

- **perturbations** of a snippet as users retype it: casing, punctuation, typos,
  clause order, filler words, and combinations (``kind`` = the perturbation);
- **natural neighbours**: two different snippets of the corpus that a sentence model
  finds close (near duplicates and paraphrase-like reviews, ``kind="neighbour"``).

A pair is a false hit when the cascade answers the query differently from the
reference; answers depend on the models, so they are not stored here. Pairs are JSON
Lines (``query``, ``reference``, ``kind``, labels, ``source``), reusable across models.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

from tiergate.cache.exact import normalise_text
from tiergate.cache.semantic import Embedder
from tiergate.errors import ConfigError

__all__ = [
    "PERTURBATIONS",
    "Pair",
    "build_pair_file",
    "build_pairs",
    "neighbour_pairs",
    "read_pairs",
    "write_pairs",
]


@dataclass(frozen=True)
class Pair:
    """A query and the cached reference it might be answered with."""

    query: str
    reference: str
    kind: str
    query_label: str | None = None
    reference_label: str | None = None
    source: str = ""


Perturbation = Callable[[str, random.Random], str | None]

_WORD = re.compile(r"[A-Za-z]{4,}")
_PUNCT = re.compile(r"[^\w\s']")
_CLAUSE = re.compile(r"(?:,\s+(?:but|and|yet|though|while)\s+|;\s+|\s+--\s+|:\s+|\s+-\s+)")
_KEYS = "qwertyuiop asdfghjkl zxcvbnm"
_FILLERS_BEFORE = ("honestly, ", "i think ", "well, ", "imo ", "ok so ")
_FILLERS_AFTER = (" overall.", " imo", " tbh", " if you ask me.", "!")


def _casing(text: str, rng: random.Random) -> str | None:
    choice = rng.randrange(4)
    if choice == 0:
        return text.lower()
    if choice == 1:
        return text.upper()
    if choice == 2:
        return text.title()
    return text[:1].lower() + text[1:]


def _punctuation(text: str, rng: random.Random) -> str | None:
    choice = rng.randrange(3)
    if choice == 0:
        return re.sub(r"\s+", " ", _PUNCT.sub("", text)).strip()
    if choice == 1:
        return text.rstrip(".!? ") + rng.choice(["!!", "...", " !", "?"])
    return text.replace(",", "").replace(".", " .")


def _typo_word(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    op = rng.randrange(4)
    if op == 0:  # swap neighbours
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if op == 1:  # drop a letter
        return word[:i] + word[i + 1 :]
    if op == 2:  # double a letter
        return word[:i] + word[i] + word[i:]
    row = next(r for r in _KEYS.split() if word[i].lower() in r) if word[i].isalpha() else ""
    j = row.find(word[i].lower())
    near = [row[k] for k in (j - 1, j + 1) if 0 <= k < len(row)] or [word[i]]
    return word[:i] + rng.choice(near) + word[i + 1 :]  # a neighbouring key


def _typos(text: str, rng: random.Random) -> str | None:
    words = list(_WORD.finditer(text))
    if not words:
        return None
    out = text
    for m in sorted(
        rng.sample(words, min(len(words), rng.choice([1, 1, 2]))), key=lambda m: -m.start()
    ):
        out = out[: m.start()] + _typo_word(m.group(), rng) + out[m.end() :]
    return out


def _clause_order(text: str, rng: random.Random) -> str | None:
    m = _CLAUSE.search(text)
    if m is None or m.start() < 10 or len(text) - m.end() < 10:
        return None
    first, second = text[: m.start()].strip(), text[m.end() :].strip().rstrip(".!")
    sep = m.group().strip()
    joiner = f" {sep} " if sep in ("--", "-") else f"{sep} "
    return f"{second[:1].upper()}{second[1:]}{joiner}{first[:1].lower()}{first[1:]}."


def _filler(text: str, rng: random.Random) -> str | None:
    if rng.random() < 0.5:
        return rng.choice(_FILLERS_BEFORE) + text[:1].lower() + text[1:]
    return text.rstrip(".") + rng.choice(_FILLERS_AFTER)


def _combo(text: str, rng: random.Random) -> str | None:
    out: str | None = text
    for f in rng.sample([_casing, _punctuation, _typos, _filler], 2):
        out = f(out, rng) if out is not None else None
    return out


PERTURBATIONS: dict[str, Perturbation] = {
    "casing": _casing,
    "punctuation": _punctuation,
    "typo": _typos,
    "clause_order": _clause_order,
    "filler": _filler,
    "combo": _combo,
}


def build_pairs(
    texts: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    per_text: int = 1,
    seed: int = 0,
    source: str = "",
    kinds: Iterable[str] = tuple(PERTURBATIONS),
) -> list[Pair]:
    """``per_text`` perturbation pairs per snippet (query = perturbed, reference = original).

    Perturbations that change nothing after normalisation are dropped: the exact cache
    answers those.
    """
    rng = random.Random(seed)
    names = list(kinds)
    pairs: list[Pair] = []
    for i, text in enumerate(texts):
        label = labels[i] if labels is not None else None
        for kind in rng.sample(names, min(per_text, len(names))):
            query = PERTURBATIONS[kind](text, rng)
            if query is None or normalise_text(query) == normalise_text(text):
                continue
            pairs.append(Pair(normalise_text(query), text, kind, label, label, f"{source}:{i}"))
    return pairs


def neighbour_pairs(
    texts: Sequence[str],
    labels: Sequence[str] | None,
    embedder: Embedder,
    *,
    min_similarity: float = 0.7,
    source: str = "",
    batch_size: int = 256,
) -> list[Pair]:
    """Each snippet paired with its nearest *other* snippet, when that is close enough."""
    vecs = np.concatenate(
        [embedder.embed(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)]
    )
    keys = [normalise_text(t) for t in texts]
    pairs: list[Pair] = []
    for start in range(0, len(texts), batch_size):
        sims = vecs[start : start + batch_size] @ vecs.T
        for row, i in enumerate(range(start, min(start + batch_size, len(texts)))):
            sims[row, i] = -1.0
            j = int(sims[row].argmax())
            if sims[row, j] >= min_similarity and keys[i] != keys[j]:
                ql = labels[i] if labels is not None else None
                rl = labels[j] if labels is not None else None
                pairs.append(Pair(texts[i], texts[j], "neighbour", ql, rl, f"{source}:{i}~{j}"))
    return pairs


def write_pairs(path: Path, pairs: Iterable[Pair]) -> int:
    """Write pairs as JSON Lines; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("wb") as f:
        for p in pairs:
            f.write(orjson.dumps(asdict(p)) + b"\n")
            n += 1
    return n


def read_pairs(path: Path) -> list[Pair]:
    """Read a pair file written by :func:`write_pairs`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pair file not found: {path}", path=str(path))
    pairs = []
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    pairs.append(Pair(**orjson.loads(line)))
                except (orjson.JSONDecodeError, TypeError) as exc:
                    raise ConfigError(f"{path}:{lineno}: not a pair record: {exc}") from exc
    return pairs


def build_pair_file(
    data_files: Sequence[Path],
    embedder: Embedder,
    out: Path,
    *,
    per_text: int = 2,
    seed: int = 0,
    neighbour_min_similarity: float = 0.7,
) -> list[Pair]:
    """The evaluation pair set of labelled JSONL/CSV files: ``per_text`` perturbations
    per snippet plus natural neighbours across all files; written to ``out``.

    Use data the models were not trained on (the demo: calibration and test splits).
    """
    from tiergate.offline import read_labelled

    pairs: list[Pair] = []
    all_texts: list[str] = []
    all_labels: list[str] = []
    for path in data_files:
        texts, labels = read_labelled(Path(path))
        pairs += build_pairs(texts, labels, per_text=per_text, seed=seed, source=Path(path).name)
        all_texts += texts
        all_labels += labels
    pairs += neighbour_pairs(
        all_texts, all_labels, embedder, min_similarity=neighbour_min_similarity, source="all"
    )
    write_pairs(out, pairs)
    return pairs
