"""HTTP API (FastAPI): thin translation between HTTP and :class:`~tiergate.Service`."""

from __future__ import annotations

from tiergate.api.app import create_app

__all__ = ["create_app"]
