"""The embedded demo: Rotten Tomatoes snippets, a TF-IDF tier and an MPNet tier.

Built once into a cache directory by :func:`build_demo` (``tiergate demo build``).
"""

from __future__ import annotations

from tiergate.demo.build import build_demo, default_demo_dir
from tiergate.demo.data import read_jsonl

__all__ = ["build_demo", "default_demo_dir", "read_jsonl"]
