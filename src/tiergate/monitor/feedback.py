"""Recent answers awaiting a true label (``POST /v1/feedback``).

Every answer is remembered under its request id in a bounded in-memory map (oldest
out first, O(1) per answer) as its JSON encoding, the same bytes a shared store keeps:
``bytes`` are not tracked by the garbage collector, so a full store (100k answers by
default) adds nothing to what any collection walks. (Held as objects, the answers were
most of what each middle-generation collection walked under load; held as tuples, they
still piled up in the young generation between collections, because tuples reused from
CPython's free list do not count towards ``threshold0``.) With ``store: redis`` the
answers are also written to Redis, in batches by a background task (never a round trip
on the request path), so a label may reach any replica. A labelled answer (and, when
asked, a shadow label, marked ``"source": "shadow"``) can be appended to a JSON Lines
log: the input of ``tiergate recalibrate``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import orjson

from tiergate.cache.store import CacheStore

__all__ = ["Answer", "AnswerRow", "FeedbackStore", "encode_row"]

log = logging.getLogger("tiergate.monitor")
_FLUSH_S = 0.1
_MAX_PENDING = 10_000


#: An answer as it is stored: the fields of :class:`Answer`, in order.
AnswerRow = tuple[str, str, str | None, str | None, float | None, str | None, float]


@dataclass(frozen=True, slots=True)
class Answer:
    """What was answered to one request id."""

    input: str
    output: str
    tier: str | None
    cache: str | None
    confidence: float | None
    calibration_version: str | None
    at: float  # on the store's clock

    def to_bytes(self) -> bytes:
        return encode_row(astuple(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Answer:
        return cls(**orjson.loads(raw))


def encode_row(row: AnswerRow) -> bytes:
    """The JSON object an :class:`Answer` with these fields is stored as (~0.4 µs)."""
    text, output, tier, cache, confidence, version, at = row
    return orjson.dumps(
        {"input": text, "output": output, "tier": tier, "cache": cache,
         "confidence": confidence, "calibration_version": version, "at": at},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )  # fmt: skip


class FeedbackStore:
    """Request id → :class:`Answer`, bounded in memory, optionally shared via a store."""

    def __init__(
        self,
        max_items: int,
        ttl_s: float,
        *,
        shared: CacheStore | None = None,
        log_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.shared = shared
        self.log_path = log_path
        self._clock = clock
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        self._pending: list[tuple[bytes, bytes]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.dropped = 0  # shared writes given up (Redis slower than traffic)

    def __repr__(self) -> str:
        return f"FeedbackStore({len(self._answers)}/{self.max_items}, shared={self.shared!r})"

    def __len__(self) -> int:
        return len(self._answers)

    def record(self, request_id: str, row: AnswerRow) -> None:
        """Remember ``row`` (the fields of an :class:`Answer`) under ``request_id``."""
        answers = self._answers
        raw = answers[request_id] = encode_row(row)
        if len(answers) > self.max_items:
            answers.popitem(last=False)
        if self.shared is not None:
            if len(self._pending) >= _MAX_PENDING:
                self.dropped += 1
            else:
                self._pending.append((request_id.encode(), raw))
                if self._flusher is None or self._flusher.done():
                    self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(_FLUSH_S)
        await self.flush()

    async def flush(self) -> None:
        """Write the answers recorded since the last flush to the shared store."""
        if self.shared is None or not self._pending:
            return
        batch, self._pending = self._pending, []
        await self.shared.set_many(batch, self.ttl_s)

    async def find(self, request_id: str) -> Answer | None:
        """The answer given to ``request_id``, if it is still remembered."""
        raw = self._answers.get(request_id)
        if raw is None and self.shared is not None:
            raw = await self.shared.get(request_id.encode())
        answer = Answer.from_bytes(raw) if raw is not None else None
        if answer is not None and self._clock() - answer.at > self.ttl_s:
            return None
        return answer

    def append_log(self, row: dict[str, Any]) -> None:
        """One labelled row (``input``, ``label`` and where it came from) to the log."""
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            await self.flush()
        except Exception as exc:  # shutting down: say so, do not fail the shutdown
            log.warning("feedback store: last flush failed: %s", exc)
        if self.shared is not None:
            await self.shared.close()
