"""Shared fixtures. ``demo_dir``: the built demo (built on first use, then cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """A complete demo build: ``$TIERGATE_TEST_DEMO_DIR`` or ``$TIERGATE_HOME/demo`` (default ``~/.cache/tiergate/demo``).

    The first build takes a few minutes (MPNet export and embedding); later sessions
    reuse it in about a second.
    """
    from tiergate.config import tiergate_home
    from tiergate.demo.build import build_demo

    env = os.environ.get("TIERGATE_TEST_DEMO_DIR")
    target = Path(env) if env else tiergate_home() / "demo"
    config = build_demo(target)
    return config.parent
