"""A copy of a built demo's config that works from any folder, with overrides.

Benchmarks and chaos tests run variants of the demo (cache off, faults on, other
limits): they load this dict, change what they need and write it anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["demo_config_dict", "write_config"]

_FILE_KEYS = ("path", "tokenizer", "head", "stack")


def demo_config_dict(demo_dir: Path, name: str = "config.yaml") -> dict[str, Any]:
    """One of the demo's configs (``config.yaml``, ``config-3tier.yaml``) as a dict, every
    file path made absolute."""
    demo_dir = Path(demo_dir).resolve()
    cfg: dict[str, Any] = yaml.safe_load((demo_dir / name).read_text(encoding="utf-8"))
    for tier in cfg["tiers"]:
        model = tier["model"]
        for key in _FILE_KEYS:
            if key in model:
                model[key] = str(demo_dir / model[key])
    if cfg.get("calibration"):
        cfg["calibration"] = str(demo_dir / cfg["calibration"])
    return cfg


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    """Write ``cfg`` as YAML to ``path``; returns ``path``."""
    Path(path).write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return Path(path)
