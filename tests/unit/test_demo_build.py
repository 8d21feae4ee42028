"""Build plumbing that needs no models: atomic writes, cache hits, default dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiergate.demo._io import atomic_path, write_json
from tiergate.demo.build import (
    _RECIPES,
    _STEPS,
    BUILD_FORMAT,
    OUTPUTS,
    _is_built,
    build_demo,
    default_demo_dir,
)


def test_default_demo_dir(tmp_path: Path) -> None:
    assert default_demo_dir(tmp_path) == tmp_path / "demo"
    assert default_demo_dir() == Path.home() / ".cache" / "tiergate" / "demo"


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_complete_build_returns_at_once(tmp_path: Path) -> None:
    for name in OUTPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    for step in _STEPS:
        write_json(tmp_path / f"steps/{step.key}.json", {"recipe": _RECIPES.get(step.key, 1)})
    write_json(tmp_path / "manifest.json", {"build_format": BUILD_FORMAT})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert build_demo(tmp_path) == (tmp_path / "config.yaml").resolve()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert "config.yaml" in OUTPUTS and "mpnet-int8.onnx" in OUTPUTS


def test_a_step_with_an_older_recipe_makes_the_build_incomplete(tmp_path: Path) -> None:
    for name in OUTPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    write_json(tmp_path / "manifest.json", {"build_format": BUILD_FORMAT})
    for step in _STEPS:
        write_json(tmp_path / f"steps/{step.key}.json", {"recipe": _RECIPES.get(step.key, 1)})
    assert _is_built(tmp_path)
    old = next(step.key for step in _STEPS if _RECIPES.get(step.key, 1) > 1)
    write_json(tmp_path / f"steps/{old}.json", {"recipe": _RECIPES[old] - 1})
    assert not _is_built(tmp_path)  # so `serve` / `demo build` re-run that step and its dependents
