"""Build the embedded demo: data split, tiers, calibration, configs and manifest.

Two configs come out of one build: ``config.yaml`` (NB → MPNet int8, what ``serve``
runs) and ``config-3tier.yaml`` (NB → all-MiniLM-L6-v2 fine-tuned on train → MPNet int8),
each with its own certified calibration, so the two can be compared on the same data.

Every step is skipped when its outputs exist (a step that re-runs also re-runs the
steps that depend on it); every file is written atomically; ``manifest.json`` is
written last, so its presence means the build is complete.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

import joblib
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from tokenizers import Tokenizer

from tiergate.demo._io import atomic_path, write_json, write_text
from tiergate.demo.data import SPLIT_NAMES, read_jsonl, write_demo_splits
from tiergate.demo.train import (
    embed_corpus,
    measure_latency,
    train_fast,
    train_head,
)
from tiergate.errors import ConfigError
from tiergate.models.hashing import file_digest
from tiergate.models.onnx import OnnxEmbeddingClassifier, OnnxSentenceEmbedder

__all__ = [
    "BUILD_FORMAT",
    "CONFIG3_NAME",
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "OUTPUTS",
    "build_demo",
    "built_config",
    "default_demo_dir",
]

BUILD_FORMAT = 3
# Bump a step's recipe when its code changes: caches of older recipes are rebuilt.
_RECIPES = {"fast": 2, "export": 3, "accurate": 2, "calibrate": 3, "config": 3, "middle": 3,
            "calibrate3": 4, "config3": 3}  # fmt: skip
STACK_HOLDOUT = 0.2  # share of train held out of fine-tuning to fit the stack with NB
SMOOTHING_TEXTS = 256  # training texts that set the int8 smoothing scales
CONFIG_NAME = "config.yaml"
CONFIG3_NAME = "config-3tier.yaml"
MANIFEST_NAME = "manifest.json"
MAX_LENGTH = 128
_VERSIONED = (
    "numpy",
    "scikit-learn",
    "onnxruntime",
    "tokenizers",
    "torch",
    "transformers",
    "sentence-transformers",
    "onnx",
)

_CONFIG_HEAD = """\
# Built by `tiergate demo build`; paths are relative to this file.
service: review-sentiment
tiers:
  - name: fast
    model: {kind: sklearn, path: fast.joblib}
  - name: accurate
    model: {kind: onnx-embedding-classifier, path: mpnet-int8.onnx, tokenizer: tokenizer.json,
            head: accurate-head.joblib, max_length: 128}
    timeout_ms: 2000
"""
# The three-tier demo: the middle tier is all-MiniLM-L6-v2 fine-tuned on train (int8), served
# like the accurate tier (bench/economics.py and the middle step's record measured the
# candidates).
_CONFIG3_HEAD = """\
# Built by `tiergate demo build`; paths are relative to this file.
service: review-sentiment
tiers:
  - name: fast
    model: {kind: sklearn, path: fast.joblib}
  - name: middle
    model: {kind: onnx-embedding-classifier, path: middle-int8.onnx,
            tokenizer: middle-tokenizer.json, head: middle-head.joblib, stack: fast.joblib,
            max_length: 128}
  - name: accurate
    model: {kind: onnx-embedding-classifier, path: mpnet-int8.onnx, tokenizer: tokenizer.json,
            head: accurate-head.joblib, max_length: 128}
    timeout_ms: 2000
"""
_CONFIG3_CALIBRATION = "calibration: calibration-3tier.json\n"
# calibrate_config loads the config, which may not name a calibration file that does not
# exist yet: calibration runs on _CONFIG_HEAD alone; config.yaml adds this line after.
_CONFIG_CALIBRATION = "calibration: calibration.json\n"
# What `tiergate check` holds the demo to (met on a quiet 2-core machine with headroom).
_CONFIG_SLO = """\
slo: {p99_ms: 100, accuracy: 0.83, availability: 0.999, cost_per_1k: 0.0005, rate: 50}
"""
# Watching production: 2 % of the fast tier's accepted answers re-answered by MPNet (at
# most 5 a second), labels sent to /v1/feedback logged for `tiergate recalibrate`.
_CONFIG_MONITOR = """\
monitor:
  shadow: {rate: 0.02, max_per_s: 5}
  feedback: {log: feedback.jsonl}
"""


def default_demo_dir(home: Path | None = None) -> Path:
    """``home/demo``; ``home`` defaults to ``~/.cache/tiergate`` (the CLI passes $TIERGATE_HOME)."""
    base = Path(home).expanduser() if home is not None else Path.home() / ".cache" / "tiergate"
    return base / "demo"


@dataclass
class _Build:
    target: Path
    progress: Progress
    force: bool
    task: TaskID | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    ran: set[str] = field(default_factory=set)

    def path(self, name: str) -> Path:
        return self.target / name

    def split(self, name: str) -> tuple[list[str], list[str]]:
        return read_jsonl(self.target / "data" / f"{name}.jsonl")

    def status(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, status=text)


@dataclass(frozen=True)
class _Step:
    key: str
    title: str
    outputs: tuple[str, ...]
    run: Callable[[_Build], dict[str, Any]]
    after: tuple[str, ...] = ()


def _step_data(b: _Build) -> dict[str, Any]:
    return write_demo_splits(b.path("data")).to_dict()


def _step_fast(b: _Build) -> dict[str, Any]:
    train, cal, test = b.split("train"), b.split("calibration"), b.split("test")
    pipeline, choice = train_fast(train)
    with atomic_path(b.path("fast.joblib")) as tmp:
        joblib.dump(pipeline, tmp)
    return {
        **choice,
        "calibration_accuracy": round(float(pipeline.score(*cal)), 4),
        "test_accuracy": round(float(pipeline.score(*test)), 4),
    }


def _token_lengths(tokenizer_path: Path, texts: list[str]) -> dict[str, Any]:
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_truncation()
    tok.no_padding()
    lengths = np.asarray([len(e.ids) for e in tok.encode_batch(texts)])
    return {
        "max_length": MAX_LENGTH,
        "fraction_over_max_length": round(float((lengths > MAX_LENGTH).mean()), 5),
        "count_over_max_length": int((lengths > MAX_LENGTH).sum()),
        "median": float(np.median(lengths)),
        "p99": float(np.percentile(lengths, 99)),
        "max": int(lengths.max()),
    }


def _step_export(b: _Build) -> dict[str, Any]:
    from tiergate.demo.export import export_mpnet

    texts = [t for name in SPLIT_NAMES for t in b.split(name)[0]]
    probe = random.Random(0).sample(texts, min(256, len(texts)))
    train = b.split("train")[0]
    report = export_mpnet(
        b.path("mpnet-fp32.onnx"),
        b.path("mpnet-int8.onnx"),
        b.path("tokenizer.json"),
        work_dir=b.path(".work"),
        probe_texts=probe,
        calibration_texts=random.Random(2).sample(train, min(SMOOTHING_TEXTS, len(train))),
        stage=b.status,
    )
    return {
        **asdict(report),
        "int8_vs_fp32_probe_texts": len(probe),
        "tokens": _token_lengths(b.path("tokenizer.json"), texts),
    }


def _step_embed(b: _Build) -> dict[str, Any]:
    embedder = OnnxSentenceEmbedder(
        b.path("mpnet-int8.onnx"), b.path("tokenizer.json"), max_length=MAX_LENGTH
    )
    splits = {name: b.split(name)[0] for name in SPLIT_NAMES}
    total = sum(len(t) for t in splits.values())
    if b.task is not None:
        b.progress.update(b.task, total=total, completed=0)

    def advance(n: int) -> None:
        if b.task is not None:
            b.progress.advance(b.task, n)

    t0 = perf_counter()
    payload: dict[str, Any] = {"model_version": np.array(embedder.version)}
    for name, texts in splits.items():
        b.status(name)
        payload[name] = embed_corpus(embedder, texts, advance=advance)
    seconds = perf_counter() - t0
    with atomic_path(b.path("embeddings-int8.npz")) as tmp, tmp.open("wb") as f:
        np.savez(f, **payload)
    return {
        "model_version": embedder.version,
        "texts": total,
        "texts_per_s": round(total / seconds, 1),
        "dim": embedder.dim,
    }


def _step_accurate(b: _Build) -> dict[str, Any]:
    version = file_digest(b.path("mpnet-int8.onnx"))
    with np.load(b.path("embeddings-int8.npz")) as npz:
        if str(npz["model_version"]) != version:
            raise ConfigError(
                "embeddings-int8.npz was computed with another model; rebuild with --force",
                path=str(b.path("embeddings-int8.npz")),
            )
        emb = {name: np.asarray(npz[name], dtype=np.float32) for name in SPLIT_NAMES}
    labels = {name: b.split(name)[1] for name in SPLIT_NAMES}
    head, choice = train_head((emb["train"], labels["train"]))
    with atomic_path(b.path("accurate-head.joblib")) as tmp:
        joblib.dump(head, tmp)
    return {
        **choice,
        "embedding_model_version": version,
        "calibration_accuracy": round(
            float(head.score(emb["calibration"], labels["calibration"])), 4
        ),
        "test_accuracy": round(float(head.score(emb["test"], labels["test"])), 4),
    }


def _step_middle(b: _Build) -> dict[str, Any]:
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split

    from tiergate.demo.export import (
        INT8_MIN_MEAN_COSINE,
        cosine_rows,
        export_onnx,
        quantize_int8,
        verify_onnx,
    )
    from tiergate.demo.finetune import finetune_minilm, minilm_l6_dir, stacked_head
    from tiergate.models.stack import stack_features

    splits = {name: b.split(name) for name in SPLIT_NAMES}
    # 80 % of train fine-tunes the encoder; the other 20 % (texts it never saw) fits how
    # much to trust it against NB's log-odds. Calibration and test stay untouched.
    train_texts, hold_texts, train_labels, hold_labels = train_test_split(
        splits["train"][0], splits["train"][1], test_size=STACK_HOLDOUT,
        stratify=splits["train"][1], random_state=0,
    )  # fmt: skip

    def progress(step: int, total: int) -> None:
        if b.task is not None:
            b.progress.update(b.task, total=total, completed=step, status="fine-tune")

    t0 = perf_counter()
    st, head, record = finetune_minilm(train_texts, train_labels, progress=progress)
    tune_s = perf_counter() - t0
    work = b.path(".work-middle")
    work.mkdir(exist_ok=True)
    fp32 = work / "middle-fp32.onnx"
    b.status("export ONNX")
    with atomic_path(b.path("middle-tokenizer.json")) as tmp:
        shutil.copyfile(minilm_l6_dir() / "tokenizer.json", tmp)
    export_onnx(st, fp32)
    fp32_vs_st = verify_onnx(st, fp32, b.path("middle-tokenizer.json"))
    del st
    b.status("quantise int8")
    probe = random.Random(0).sample(train_texts, min(256, len(train_texts)))
    ref = OnnxSentenceEmbedder(fp32, b.path("middle-tokenizer.json")).embed(probe)
    int8 = b.path("middle-int8.onnx")
    quantize_int8(fp32, int8)
    cos = cosine_rows(ref, OnnxSentenceEmbedder(int8, b.path("middle-tokenizer.json")).embed(probe))
    reduce_range, fallback = False, None
    if float(cos.mean()) < INT8_MIN_MEAN_COSINE:  # a CPU without VNNI (see export_mpnet)
        quantize_int8(fp32, int8, reduce_range=True)
        reduce_range = True
        cos = cosine_rows(
            ref, OnnxSentenceEmbedder(int8, b.path("middle-tokenizer.json")).embed(probe)
        )
    if float(cos.mean()) < INT8_MIN_MEAN_COSINE:
        fallback = f"int8 rejected (mean cosine {float(cos.mean()):.3f}): serving fp32"
        with atomic_path(int8) as tmp:
            shutil.copyfile(fp32, tmp)
    shutil.rmtree(work, ignore_errors=True)
    b.status("embed splits (int8)")
    embedder = OnnxSentenceEmbedder(int8, b.path("middle-tokenizer.json"), max_length=MAX_LENGTH)
    emb = {name: embed_corpus(embedder, texts) for name, (texts, _) in splits.items()}
    with atomic_path(b.path("embeddings-middle.npz")) as tmp, tmp.open("wb") as f:
        np.savez(f, model_version=np.array(embedder.version), **emb)  # type: ignore[arg-type]

    b.status("stack with NB (holdout)")
    fast = joblib.load(b.path("fast.joblib"))
    nb_part = clone(fast).fit(train_texts, train_labels)  # NB that never saw the holdout
    hold_emb = embedder.embed(hold_texts)
    logp = np.log(np.clip(nb_part.predict_proba(hold_texts), 1e-6, 1.0))
    feats = np.column_stack([head.decision_function(hold_emb), logp[:, 1] - logp[:, 0]])
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    stack_cv = float(cross_val_score(LogisticRegression(), feats, hold_labels, cv=cv).mean())
    plain_hold = float(head.score(hold_emb, hold_labels))
    stacker = LogisticRegression().fit(feats, hold_labels)
    use_stack = stack_cv > plain_hold
    a, bb, c = (
        (float(stacker.coef_[0][0]), float(stacker.coef_[0][1]), float(stacker.intercept_[0]))
        if use_stack else (1.0, 0.0, 0.0)
    )  # fmt: skip
    served = stacked_head(head, a, bb, c)  # the config always names `stack: fast.joblib`
    with atomic_path(b.path("middle-head.joblib")) as tmp:
        joblib.dump(served, tmp)

    def score(name: str) -> float:
        x = stack_features(emb[name], fast.predict_proba(splits[name][0]))
        return round(float(served.score(x, splits[name][1])), 4)

    return {
        **record,
        "fine_tune_seconds": round(tune_s, 1),
        "fp32_vs_sentence_transformers_min_cosine": round(fp32_vs_st, 6),
        "int8_vs_fp32_mean_cosine": round(float(cos.mean()), 4),
        "int8_vs_fp32_min_cosine": round(float(cos.min()), 4),
        "int8_reduce_range": reduce_range,
        "int8_fallback": fallback,
        "embedding_model_version": embedder.version,
        "stack": {
            "holdout_texts": len(hold_texts),
            "fine_tuned_alone_holdout_accuracy": round(plain_hold, 4),
            "stacked_with_nb_holdout_cv_accuracy": round(stack_cv, 4),
            "used": use_stack,
            "weights": {"fine_tuned_logit": a, "nb_log_odds": bb, "intercept": c},
        },
        "calibration_accuracy": score("calibration"),
        "test_accuracy": score("test"),
        "why": "bench/economics.py measured the candidates for the middle tier: on the "
        "semantic cache's frozen MiniLM-L3 embedding a logistic head reached 74.6 % on "
        "test, 79.2 % stacked with NB's log-probabilities (distilled from MPNet: no gain), "
        "on frozen all-MiniLM-L6-v2 76.3 % / 80.0 %; fine-tuned (a first run on 80 % of train) "
        "82.8 %, and that run stacked with NB's log-odds on the other 20 % 84.1 % (NB 76.8 %, "
        "MPNet 84.8 %), at about a quarter of MPNet's cost per call; this build's own "
        "numbers are the accuracies above",
    }


def _calibrate(b: _Build, head: str, tiers: tuple[str, ...], out: str) -> dict[str, Any]:
    from tiergate.offline import calibrate_config

    done_by_tier: dict[str, int] = {}

    def progress(tier: str, done: int, total: int) -> None:
        done_by_tier[tier] = done
        if b.task is not None:
            b.progress.update(
                b.task, total=total * len(tiers), completed=sum(done_by_tier.values()), status=tier
            )

    draft = b.path(".calibrate-config.yaml")
    write_text(draft, head)
    try:
        # Default target: one point under the accurate tier's certified accuracy.
        body = calibrate_config(
            draft, b.path("data/calibration.jsonl"), target_accuracy=None, confidence=0.95,
            out=b.path(out), progress=progress,
        )  # fmt: skip
    finally:
        draft.unlink(missing_ok=True)
    keys = ("version", "method", "target_accuracy", "confidence", "thresholds", "achieved", "costs")
    return {k: body[k] for k in keys if k in body}


def _step_calibrate3(b: _Build) -> dict[str, Any]:
    return _calibrate(b, _CONFIG3_HEAD, ("fast", "middle", "accurate"), "calibration-3tier.json")


def _step_config3(b: _Build) -> dict[str, Any]:
    write_text(
        b.path(CONFIG3_NAME), _CONFIG3_HEAD + _CONFIG3_CALIBRATION + _CONFIG_SLO + _CONFIG_MONITOR
    )
    return {}


def _step_calibrate(b: _Build) -> dict[str, Any]:
    return _calibrate(b, _CONFIG_HEAD, ("fast", "accurate"), "calibration.json")


def _step_config(b: _Build) -> dict[str, Any]:
    write_text(
        b.path(CONFIG_NAME), _CONFIG_HEAD + _CONFIG_CALIBRATION + _CONFIG_SLO + _CONFIG_MONITOR
    )
    return {}


_STEPS = (
    _Step("data", "data split", ("data/train.jsonl", "data/calibration.jsonl",
          "data/test.jsonl", "data/split.json"), _step_data),
    _Step("fast", "tier fast: NB n-grams + LR", ("fast.joblib",), _step_fast, ("data",)),
    _Step("export", "MPNet → ONNX fp32 + int8",
          ("mpnet-fp32.onnx", "mpnet-int8.onnx", "tokenizer.json"), _step_export, ("data",)),
    _Step("embed", "embed splits (int8)", ("embeddings-int8.npz",), _step_embed,
          ("data", "export")),
    _Step("accurate", "tier accurate: MPNet + LR head", ("accurate-head.joblib",),
          _step_accurate, ("embed",)),
    _Step("calibrate", "calibrate thresholds", ("calibration.json",), _step_calibrate,
          ("fast", "accurate")),
    _Step("config", "write config.yaml", (CONFIG_NAME,), _step_config, ("calibrate",)),
    _Step("middle", "tier middle: MiniLM-L6 fine-tuned", ("middle-int8.onnx",
          "middle-tokenizer.json", "middle-head.joblib", "embeddings-middle.npz"), _step_middle,
          ("fast",)),
    _Step("calibrate3", "calibrate three tiers", ("calibration-3tier.json",), _step_calibrate3,
          ("fast", "middle", "accurate")),
    _Step("config3", "write config-3tier.yaml", (CONFIG3_NAME,), _step_config3, ("calibrate3",)),
)  # fmt: skip
OUTPUTS = tuple(o for step in _STEPS for o in step.outputs)  # every file a build leaves


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _manifest(b: _Build, seconds: dict[str, float | str]) -> dict[str, Any]:
    test_texts = b.split("test")[0]
    sample = random.Random(1).sample(test_texts, min(512, len(test_texts)))
    b.status("fast")
    fast = joblib.load(b.path("fast.joblib"))
    fast_latency = measure_latency(fast.predict_proba, sample, batches=32)
    b.status("accurate (int8)")
    accurate = OnnxEmbeddingClassifier(
        b.path("mpnet-int8.onnx"), b.path("tokenizer.json"), b.path("accurate-head.joblib"),
        max_length=MAX_LENGTH,
    )  # fmt: skip
    accurate_latency = measure_latency(accurate.predict_batch, sample)
    embedders: dict[str, Any] = {}
    for name in ("mpnet-int8.onnx", "mpnet-fp32.onnx"):
        b.status(f"embedder {name}")
        emb = OnnxSentenceEmbedder(b.path(name), b.path("tokenizer.json"), max_length=MAX_LENGTH)
        embedders[name] = {
            "version": emb.version,
            "latency": measure_latency(emb.embed, sample, singles=100, batches=4),
        }
    b.status("middle (int8)")
    middle = OnnxEmbeddingClassifier(
        b.path("middle-int8.onnx"), b.path("middle-tokenizer.json"), b.path("middle-head.joblib"),
        max_length=MAX_LENGTH, stack_path=b.path("fast.joblib"),
    )  # fmt: skip
    middle_latency = measure_latency(middle.predict_batch, sample)
    data_dir = b.path("data")
    rec = b.records
    files = sorted(p for p in b.target.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {
        "build_format": BUILD_FORMAT,
        "built": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": CONFIG_NAME,
        "data": {
            **rec["data"],
            "sha256": {n: file_digest(data_dir / f"{n}.jsonl", length=64) for n in SPLIT_NAMES},
        },
        "tiers": {
            "fast": {
                "model_version": file_digest(b.path("fast.joblib")),
                **{k: v for k, v in rec["fast"].items() if k != "seconds"},
                "latency": fast_latency,
            },
            "accurate": {
                "model_version": accurate.version,
                **{k: v for k, v in rec["accurate"].items() if k != "seconds"},
                "latency": accurate_latency,
            },
        },
        "three_tier": {
            "config": CONFIG3_NAME,
            "middle": {
                "model_version": middle.version,
                **{k: v for k, v in rec["middle"].items() if k != "seconds"},
                "latency": middle_latency,
            },
            "calibration": {k: v for k, v in rec["calibrate3"].items() if k != "seconds"},
        },
        "embedders": embedders,
        "export": {k: v for k, v in rec["export"].items() if k != "seconds"},
        "calibration": {k: v for k, v in rec["calibrate"].items() if k != "seconds"},
        "files": {str(p.relative_to(b.target)): p.stat().st_size for p in files},
        "step_seconds": seconds,
        "versions": _versions(),
    }


def _is_built(target: Path) -> bool:
    try:
        manifest = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("build_format") != BUILD_FORMAT:
        return False
    current = all(
        _recipe(target / f"steps/{step.key}.json") == _RECIPES.get(step.key, 1) for step in _STEPS
    )
    return current and all((target / o).exists() for o in OUTPUTS)


def built_config(target: Path) -> Path | None:
    """The ``config.yaml`` of a complete, current build in ``target``; ``None`` if there is none.

    Reads only the manifest and step records (no model, no torch): cheap enough to ask
    before serving, as :func:`build_demo` itself does before building.
    """
    target = Path(target).expanduser().resolve()
    return target / CONFIG_NAME if _is_built(target) else None


def _remove_partials(target: Path) -> None:
    # Left behind only by a killed build (atomic_path cleans up after exceptions).
    for path in [*target.glob(".partial-*"), *target.glob("*/.partial-*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """One build per directory at a time (a CLI build racing `tiergate serve`)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, builds are still atomic per file
        yield
        return
    with (target / ".build.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _recipe(record_path: Path) -> int:
    try:
        return int(json.loads(record_path.read_text(encoding="utf-8")).get("recipe", 1))
    except (OSError, ValueError, TypeError):
        return 0


def _run(b: _Build) -> dict[str, float | str]:
    seconds: dict[str, float | str] = {}
    for step in _STEPS:
        task = b.progress.add_task(step.title, total=None, status="")
        record_path = b.path(f"steps/{step.key}.json")
        stale = b.force or any(dep in b.ran for dep in step.after)
        done = (
            record_path.is_file()
            and all(b.path(o).exists() for o in step.outputs)
            and _recipe(record_path) == _RECIPES.get(step.key, 1)
        )
        if done and not stale:
            b.records[step.key] = json.loads(record_path.read_text(encoding="utf-8"))
            seconds[step.key] = "cached"
            b.progress.update(task, total=1, completed=1, status="cached")
            continue
        b.task = task
        t0 = perf_counter()
        record = step.run(b)
        elapsed = round(perf_counter() - t0, 2)
        write_json(record_path, {**record, "recipe": _RECIPES.get(step.key, 1), "seconds": elapsed})
        b.records[step.key] = record
        b.ran.add(step.key)
        seconds[step.key] = elapsed
        total = b.progress.tasks[task].total or 1
        b.progress.update(task, total=total, completed=total, status=f"{elapsed:.1f} s")
    return seconds


def build_demo(target: Path, *, force: bool = False, console: Console | None = None) -> Path:
    """Build (or reuse) the demo in ``target``; return the path of its ``config.yaml``.

    A complete build (a ``manifest.json`` of the current format) returns at once unless
    ``force``. Needs ``tiergate[build]`` only for the steps that have not run yet.
    """
    target = Path(target).expanduser().resolve()
    config_path = target / CONFIG_NAME
    if not force and _is_built(target):
        return config_path
    target.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    with _build_lock(target):
        if not force and _is_built(target):  # another process finished it meanwhile
            return config_path
        _remove_partials(target)
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description:<32}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[status]}"),
        )
        with Progress(*columns, console=console) as progress:
            b = _Build(target=target, progress=progress, force=force)
            seconds = _run(b)
            b.task = progress.add_task("measure latency, write manifest", total=None, status="")
            t0 = perf_counter()
            manifest = _manifest(b, seconds)
            seconds["manifest"] = round(perf_counter() - t0, 2)
            write_json(target / MANIFEST_NAME, manifest)
            progress.update(b.task, total=1, completed=1, status=f"{seconds['manifest']:.1f} s")
    return config_path
