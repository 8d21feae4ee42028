"""Adaptive micro-batching: merge concurrent requests to one tier into one model call.

Policy (greedy dynamic batching): when the tier's worker is idle a request is
dispatched at once, so a lone request waits for nothing (a cancellable remote call even
runs in the caller's own task); while a batch runs, new
requests queue, and the next batch takes everything queued (up to ``max_batch``
inputs, and no more than the online latency model says can finish before the earliest
deadline among them). Batch size therefore grows with load, exactly when it pays. An optional
``max_wait`` holds a non-full batch a little longer for more company, but never past
the point where the batch, by the online latency model ``a + b·n``, would finish after
the earliest deadline in it. Requests whose deadline has passed, or whose caller gave
up, are dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from tiergate.errors import DeadlineExceededError, OverloadError


class _Rows(Protocol):
    """A batch's answer, sliced per request (a probability array, or a ``Scored``)."""

    def __getitem__(self, index: slice, /) -> Any: ...


R = TypeVar("R", bound=_Rows)

__all__ = ["AimdLimit", "BatchLatencyModel", "MicroBatcher"]


class BatchLatencyModel:
    """Online least-squares fit of batch latency ``a + b * n`` (seconds)."""

    def __init__(self, decay: float = 0.98) -> None:
        self._decay = decay
        self._s = np.zeros(5)  # sum w, w·n, w·n², w·t, w·n·t

    def observe(self, n: int, seconds: float) -> None:
        self._s = self._s * self._decay + np.array([1.0, n, n * n, seconds, n * seconds])

    def predict(self, n: int) -> float:
        w, sn, snn, st, snt = self._s
        if w < 1e-9:
            return 0.0
        var = snn / w - (sn / w) ** 2
        if var < 1e-9:  # one batch size seen so far: assume proportional cost
            return float(st / w) * n / max(sn / w, 1.0)
        b = (snt / w - (sn / w) * (st / w)) / var
        a = st / w - b * sn / w
        return float(max(a, 0.0) + max(b, 0.0) * n)


class AimdLimit:
    """Clipper's batch-size control: additive increase, multiplicative decrease.

    After a batch that reached the current limit and finished within ``target_s`` the
    limit grows by ``step``; after one that took longer it shrinks by ``backoff``. It
    never leaves ``[1, max_batch]``. The alternative to the deadline cut of
    :class:`MicroBatcher`; ``bench/batching_served.py`` compares the two.
    """

    def __init__(
        self, max_batch: int, target_s: float, *, step: float = 1.0, backoff: float = 0.9
    ) -> None:
        if target_s <= 0 or step <= 0 or not 0 < backoff < 1:
            raise ValueError("target_s > 0, step > 0, 0 < backoff < 1")
        self.max_batch = max_batch
        self.target_s = target_s
        self.step = step
        self.backoff = backoff
        self._limit = 1.0

    def __repr__(self) -> str:
        return f"AimdLimit(limit={self.limit}, target_s={self.target_s})"

    @property
    def limit(self) -> int:
        """Most inputs the next batch may take."""
        return max(1, min(self.max_batch, int(self._limit)))

    def observe(self, n: int, seconds: float) -> None:
        if seconds > self.target_s:
            self._limit = max(1.0, self._limit * self.backoff)
        elif n >= self.limit:
            self._limit = min(float(self.max_batch), self._limit + self.step)


@dataclass
class _Item(Generic[R]):
    texts: Sequence[str]
    future: asyncio.Future[R]
    deadline: float | None
    enqueued: float = field(default=0.0)


class MicroBatcher(Generic[R]):
    """Queue in front of one tier's model; see the module docstring for the policy."""

    def __init__(
        self,
        run_batch: Callable[[list[str]], Awaitable[R]],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        max_queue: int = 1024,
        name: str = "tier",
        aimd_target_s: float | None = None,
        gather_turns: int = 0,
        abandon_orphans: bool = False,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
            raise ValueError("max_batch >= 1, max_wait_s >= 0, max_queue >= 1")
        # With an AIMD target the batch size follows AimdLimit instead of the deadline cut.
        self.aimd = None if aimd_target_s is None else AimdLimit(max_batch, aimd_target_s)
        self._run = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._queue: deque[_Item[R]] = deque()
        self._queued_inputs = 0
        self._wakeup: asyncio.Event | None = None
        self._busy = False  # a batch is running (in the batcher's task or a caller's)
        self._task: asyncio.Task[None] | None = None
        self.latency = BatchLatencyModel()
        self.batch_sizes: deque[int] = deque(maxlen=1024)
        self.dropped_expired = 0
        # Event-loop turns yielded before taking a batch (a tier that runs inline blocks
        # the loop while it runs, so requests that arrived meanwhile are not parsed yet).
        self.gather_turns = gather_turns
        # Cancel a running batch once every caller in it has given up (deadline passed,
        # client gone). Only for batches that can be cancelled: a remote call awaited on
        # the loop closes its connection and frees the tier for the next batch; a model
        # in a thread would keep running beside the next batch, so it is left to finish.
        self.abandon_orphans = abandon_orphans
        self.abandoned = 0
        # Called with the size of every batch run (the service exports a histogram).
        self.on_batch: Callable[[int], None] | None = None

    def __repr__(self) -> str:
        return (
            f"MicroBatcher({self.name!r}, max_batch={self.max_batch}, "
            f"max_wait_s={self.max_wait_s}, max_queue={self.max_queue})"
        )

    @property
    def queued(self) -> int:
        """Inputs waiting (not yet in a running batch)."""
        return self._queued_inputs

    async def submit(self, texts: Sequence[str], deadline: float | None = None) -> R:
        """Queue ``texts``; resolves with their probability rows, in order."""
        if self._queued_inputs + len(texts) > self.max_queue:
            raise OverloadError(
                f"tier {self.name!r} queue is full ({self._queued_inputs} inputs waiting)",
                retry_after_s=1.0,
                tier=self.name,
            )
        if self.abandon_orphans and not self._busy and not self._queue and self.max_wait_s == 0:
            return await self._run_direct(texts, deadline)
        item: _Item[R] = _Item(
            texts, asyncio.get_running_loop().create_future(), deadline, self._clock()
        )
        self._queue.append(item)
        self._queued_inputs += len(texts)
        if not self._busy:
            self._kick()
        return await item.future

    async def _run_direct(self, texts: Sequence[str], deadline: float | None) -> R:
        # The tier is idle and nobody waits: run the call in the caller's own task, with
        # no hand-over to the batcher's task and back (two event-loop turns and a task
        # fewer per request: the remote path's added latency at low load). Requests
        # arriving meanwhile queue as usual and go as the next batch. Only for
        # cancellable calls: the caller giving up cancels its own call, which is what
        # ``abandon_orphans`` does for a batch whose callers all left.
        t0 = self._clock()
        if deadline is not None and t0 >= deadline:
            self.dropped_expired += 1
            raise DeadlineExceededError(f"deadline passed before {self.name!r} was called")
        self._busy = True
        try:
            rows = await self._run(list(texts))
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        finally:
            self._busy = False
            if self._queue:
                self._kick()
        self._observe(len(texts), self._clock() - t0)
        return rows

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher-{self.name}"
            )
        assert self._wakeup is not None
        self._wakeup.set()

    def _observe(self, n: int, elapsed: float) -> None:
        self.latency.observe(n, elapsed)
        if self.aimd is not None:
            self.aimd.observe(n, elapsed)
        self.batch_sizes.append(n)
        if self.on_batch is not None:
            self.on_batch(n)

    def _take(self) -> list[_Item[R]]:
        # FIFO up to max_batch inputs, and never so many that the batch, by the latency
        # model, would finish after the earliest deadline in it: the rest waits for the
        # next batch instead of making this one late for everybody. (Policy "aimd": up to
        # the AIMD limit, deadlines aside.)
        batch: list[_Item[R]] = []
        size = 0
        now = self._clock()
        earliest = math.inf
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # the caller timed out or was cancelled
                self._pop()
                continue
            if item.deadline is not None and now >= item.deadline:
                self._pop()
                self.dropped_expired += 1
                item.future.set_exception(
                    DeadlineExceededError(f"deadline passed while queued for {self.name!r}")
                )
                continue
            n = len(item.texts)
            due = min(earliest, math.inf if item.deadline is None else item.deadline)
            if self.aimd is not None:
                too_big = size + n > self.aimd.limit
            else:
                too_big = size + n > self.max_batch or now + self.latency.predict(size + n) > due
            if batch and too_big:
                break
            self._pop()
            batch.append(item)
            size += n
            earliest = due
        return batch

    def _pop(self) -> None:
        item = self._queue.popleft()
        self._queued_inputs -= len(item.texts)

    async def _hold(self) -> None:
        # Wait for company only while a fuller batch still meets the earliest deadline.
        first = self._queue[0]
        until = first.enqueued + self.max_wait_s
        deadlines = [i.deadline for i in self._queue if i.deadline is not None]
        if deadlines:
            until = min(until, min(deadlines) - self.latency.predict(self.max_batch))
        while self._queued_inputs < self.max_batch:
            left = until - self._clock()
            if left <= 0:
                return
            await self._sleep(min(left, 0.0005))

    async def _run_abandonable(self, batch: list[_Item[R]], texts: list[str]) -> tuple[bool, R]:
        """Run the batch as a task, cancelled when the last caller waiting for it gives up."""
        task: asyncio.Future[R] = asyncio.ensure_future(self._run(texts))
        waiting = len(batch)

        def gone(_: object) -> None:
            nonlocal waiting
            waiting -= 1
            if waiting == 0 and not task.done():
                task.cancel()

        for item in batch:
            item.future.add_done_callback(gone)
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:  # the batcher itself is being shut down
            task.cancel()
            raise
        finally:
            for item in batch:
                item.future.remove_done_callback(gone)
        if task.cancelled():
            return True, None  # type: ignore[return-value]
        return False, task.result()

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and not self._busy:
                if self.max_wait_s > 0 and self._queued_inputs < self.max_batch:
                    await self._hold()
                for _ in range(self.gather_turns):
                    if self._queued_inputs >= self.max_batch:
                        break
                    # Let the loop read and parse what already sits in its sockets:
                    # those requests join this batch instead of waiting for the next.
                    await self._sleep(0)
                batch = self._take()
                if not batch:
                    continue
                texts = [t for item in batch for t in item.texts]
                t0 = self._clock()
                self._busy = True
                try:
                    if self.abandon_orphans:
                        abandoned, probs = await self._run_abandonable(batch, texts)
                        if abandoned:
                            self.abandoned += 1
                            continue
                    else:
                        probs = await self._run(texts)
                except Exception as exc:  # delivered to every caller in the batch
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                finally:
                    self._busy = False
                self._observe(len(texts), self._clock() - t0)
                start = 0
                for item in batch:
                    rows = probs[start : start + len(item.texts)]
                    start += len(item.texts)
                    if not item.future.done():
                        item.future.set_result(rows)
