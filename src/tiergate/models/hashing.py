"""Content hashes that identify model weights and data files."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["combine_digests", "file_digest"]


def file_digest(path: Path, length: int = 16) -> str:
    """First ``length`` hex digits of the file's SHA-256 (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:length]


def combine_digests(*parts: str, length: int = 16) -> str:
    """A digest of several digests (e.g. an encoder plus its classifier head)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:length]
