"""The embedded demo: Rotten Tomatoes snippets, an NB n-gram tier and an MPNet tier.

Built once into a cache directory by :func:`build_demo` (``tiergate demo build``).
"""

from __future__ import annotations

from tiergate.demo.build import build_demo, default_demo_dir
from tiergate.demo.data import read_jsonl
from tiergate.demo.portable import demo_config_dict, write_config

__all__ = ["build_demo", "default_demo_dir", "demo_config_dict", "read_jsonl", "write_config"]
