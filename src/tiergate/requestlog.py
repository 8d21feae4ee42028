"""Request identity and access logs.

Every response carries ``X-Request-Id``: the request's own when it is well-formed (1-128
characters of ``A-Z a-z 0-9 . _ : -``, so a client's id can be traced through), else a
new random one. With ``access_log: true`` in the config, each request also writes one
JSON line on the ``tiergate.access`` logger: request id, key *name* (never the key),
route, status, tier, cache, degraded, cost and latency.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import orjson

__all__ = ["access_line", "request_id"]

_ID_RE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("tiergate.access")


def request_id(header: bytes | None) -> bytes:
    """The client's id if well-formed, else 16 random hex digits."""
    if header is not None and _ID_RE.fullmatch(header):
        return header
    return os.urandom(8).hex().encode()


def access_line(
    rid: bytes, route: str, status: int, key: str | None, started: float,
    fields: dict[str, Any] | None,
) -> None:  # fmt: skip
    """Write one access-log line (callers check ``access_log`` is wanted first)."""
    line: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "request_id": rid.decode("ascii"),
        "key": key,
        "route": route,
        "status": status,
        "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
    }
    if fields:
        line.update(fields)
    access_log.info(orjson.dumps(line).decode())
