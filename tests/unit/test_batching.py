"""Micro-batcher policy, driven by gated fake model calls and an injected clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tiergate.batching import AimdLimit, BatchLatencyModel, MicroBatcher
from tiergate.errors import DeadlineExceededError, OverloadError
from tiergate.testing import ManualClock


class GatedModel:
    """Each call blocks until released, so tests control when batches finish."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(texts)
        await self.gate.wait()
        if self.fail:
            raise self.fail
        return np.array([[0.0, float(len(t))] for t in texts])


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_lone_request_goes_at_once_and_queued_ones_merge() -> None:
    model = GatedModel()
    b = MicroBatcher(model, max_batch=8, clock=ManualClock())
    first = asyncio.create_task(b.submit(["a"]))
    await settle()
    assert model.calls == [["a"]]  # no waiting for company when idle
    rest = [asyncio.create_task(b.submit([x * i])) for i, x in enumerate("bcd", start=1)]
    await settle()
    assert b.queued == 3
    model.gate.set()
    out = await asyncio.gather(first, *rest)
    assert model.calls == [["a"], ["b", "cc", "ddd"]]
    assert [float(o[0, 1]) for o in out] == [1.0, 1.0, 2.0, 3.0]  # rows go back to callers


async def test_max_batch_is_respected_and_multi_input_items_stay_whole() -> None:
    model = GatedModel()
    b = MicroBatcher(model, max_batch=3, clock=ManualClock())
    blocker = asyncio.create_task(b.submit(["x"]))
    await settle()
    tasks = [asyncio.create_task(b.submit(t)) for t in (["a", "b"], ["c", "d"], ["e"])]
    await settle()
    model.gate.set()
    results = await asyncio.gather(blocker, *tasks)
    assert model.calls[1:] == [["a", "b"], ["c", "d", "e"]]
    assert results[1].shape == (2, 2)


async def test_expired_and_abandoned_requests_never_reach_the_model() -> None:
    clock = ManualClock()
    model = GatedModel()
    b = MicroBatcher(model, max_batch=8, clock=clock)
    blocker = asyncio.create_task(b.submit(["x"]))
    await settle()
    expired = asyncio.create_task(b.submit(["late"], deadline=clock() + 0.01))
    abandoned = asyncio.create_task(b.submit(["gone"]))
    alive = asyncio.create_task(b.submit(["ok"], deadline=clock() + 10))
    await settle()
    abandoned.cancel()
    clock.advance(0.05)
    model.gate.set()
    await blocker
    assert (await alive).shape == (1, 2)
    with pytest.raises(DeadlineExceededError):
        await expired
    assert model.calls == [["x"], ["ok"]]
    assert b.dropped_expired == 1


async def test_a_batch_is_cut_where_it_would_finish_after_its_earliest_deadline() -> None:
    clock = ManualClock()
    model = GatedModel()
    b = MicroBatcher(model, max_batch=32, clock=clock)
    for n in (1, 2, 4, 8) * 3:
        b.latency.observe(n, 0.010 * n)  # this model costs 10 ms per input
    blocker = asyncio.create_task(b.submit(["x"]))
    await settle()
    tight = [asyncio.create_task(b.submit([f"t{i}"], deadline=clock() + 0.035)) for i in range(5)]
    loose = asyncio.create_task(b.submit(["free"]))  # no deadline: rides in a later batch
    await settle()
    model.gate.set()
    await asyncio.gather(blocker, *tight, loose)
    # 3 inputs take ~30 ms and meet the 35 ms deadline; a 4th would not, so it waits.
    assert model.calls[1] == ["t0", "t1", "t2"]
    assert model.calls[2] == ["t3", "t4", "free"]


async def test_model_error_reaches_every_caller_in_the_batch() -> None:
    model = GatedModel()
    model.fail = ValueError("boom")
    b = MicroBatcher(model, max_batch=8, clock=ManualClock())
    tasks = [asyncio.create_task(b.submit([t])) for t in "abc"]
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    # The batcher survives a failing batch.
    model.fail = None
    assert (await b.submit(["d"])).shape == (1, 2)


async def test_full_queue_sheds_immediately() -> None:
    model = GatedModel()
    b = MicroBatcher(model, max_batch=2, max_queue=2, clock=ManualClock())
    running = asyncio.create_task(b.submit(["x"]))
    await settle()
    waiting = asyncio.create_task(b.submit(["a", "b"]))
    await settle()
    with pytest.raises(OverloadError) as info:
        await b.submit(["c"])
    assert info.value.retry_after_s > 0
    model.gate.set()
    await asyncio.gather(running, waiting)


async def test_max_wait_holds_for_company_within_the_wait() -> None:
    clock = ManualClock()
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        clock.advance(s)
        await asyncio.sleep(0)

    model = GatedModel()
    model.gate.set()
    b = MicroBatcher(model, max_batch=4, max_wait_s=0.002, clock=clock, sleep=sleep)
    await b.submit(["a"])
    assert model.calls == [["a"]]
    assert sum(slept) == pytest.approx(0.002)  # held the full wait, then went alone


def test_latency_model_learns_affine_cost() -> None:
    m = BatchLatencyModel()
    for n in (1, 4, 8, 16, 32) * 5:
        m.observe(n, 0.002 + 0.0005 * n)
    assert m.predict(64) == pytest.approx(0.002 + 0.0005 * 64, rel=1e-3)


def test_aimd_grows_after_full_fast_batches_and_backs_off_after_slow_ones() -> None:
    aimd = AimdLimit(max_batch=8, target_s=0.1)
    assert aimd.limit == 1
    for _ in range(3):
        aimd.observe(aimd.limit, 0.05)  # full and within target: +1 each
    assert aimd.limit == 4
    aimd.observe(2, 0.05)  # not full: no evidence that a bigger batch fits
    assert aimd.limit == 4
    aimd.observe(4, 0.2)  # too slow: x0.9
    assert aimd.limit == 3  # int(3.6)
    for _ in range(20):
        aimd.observe(aimd.limit, 0.01)
    assert aimd.limit == 8  # capped at max_batch
    for _ in range(40):
        aimd.observe(1, 1.0)
    assert aimd.limit == 1  # never below one
    with pytest.raises(ValueError):
        AimdLimit(8, 0.1, backoff=1.0)


async def test_aimd_policy_caps_batches_by_its_limit_not_by_deadlines() -> None:
    clock = ManualClock()
    model = GatedModel()
    b = MicroBatcher(model, max_batch=32, clock=clock, aimd_target_s=0.1)
    assert b.aimd is not None and b.aimd.limit == 1
    blocker = asyncio.create_task(b.submit(["x"]))
    await settle()
    rest = [asyncio.create_task(b.submit([t])) for t in "abc"]
    await settle()
    model.gate.set()
    await asyncio.gather(blocker, *rest)
    # limit 1 -> the full, instant first batch raises it to 2, then 3
    assert model.calls == [["x"], ["a", "b"], ["c"]]


class HangingModel(GatedModel):
    """A call with a text starting with "h" hangs (a hung upstream) until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = 0

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(texts)
        if any(t.startswith("h") for t in texts):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return np.array([[0.0, float(len(t))] for t in texts])


async def test_an_idle_cancellable_tier_is_called_from_the_callers_own_task() -> None:
    model = GatedModel()
    b = MicroBatcher(model, max_batch=8, abandon_orphans=True, clock=ManualClock())
    first = asyncio.create_task(b.submit(["a"]))
    await settle()
    assert model.calls == [["a"]] and b._task is None  # no hand-over to the batcher
    rest = [asyncio.create_task(b.submit([x * i])) for i, x in enumerate("bc", start=1)]
    await settle()
    assert b.queued == 2  # the tier is busy: these wait and go as one batch
    model.gate.set()
    out = await asyncio.gather(first, *rest)
    assert model.calls == [["a"], ["b", "cc"]]
    assert [float(o[0, 1]) for o in out] == [1.0, 1.0, 2.0]
    assert list(b.batch_sizes) == [1, 2]


async def test_a_batch_all_callers_gave_up_on_is_cancelled_and_the_tier_goes_on() -> None:
    model = HangingModel()
    b = MicroBatcher(model, max_batch=8, abandon_orphans=True, clock=ManualClock())
    first = asyncio.create_task(b.submit(["h0"]))
    await settle()
    hung = [asyncio.create_task(b.submit([x])) for x in ("h1", "h2")]
    await settle()
    assert model.calls == [["h0"]] and b.queued == 2
    first.cancel()  # a lone caller gone: its own call is abandoned, the queue goes next
    await settle()
    assert model.cancelled == 1 and model.calls[1] == ["h1", "h2"]
    hung[0].cancel()  # one caller of the batch gone: the other still waits, the call goes on
    await settle()
    assert model.cancelled == 1
    later = asyncio.create_task(b.submit(["ccc"]))
    hung[1].cancel()  # the last one gone: the upstream call is abandoned
    out = await asyncio.wait_for(later, timeout=5)
    assert model.cancelled == 2 and b.abandoned == 2
    assert model.calls[2] == ["ccc"] and float(out[0, 1]) == 3.0


async def test_an_expired_request_never_reaches_an_idle_cancellable_tier() -> None:
    clock = ManualClock()
    model = GatedModel()
    b = MicroBatcher(model, max_batch=8, abandon_orphans=True, clock=clock)
    with pytest.raises(DeadlineExceededError):
        await b.submit(["late"], deadline=clock() - 0.001)
    assert model.calls == [] and b.dropped_expired == 1


async def test_without_abandon_orphans_a_batch_runs_to_its_end() -> None:
    model = GatedModel()
    b = MicroBatcher(model, max_batch=8, clock=ManualClock())
    first = asyncio.create_task(b.submit(["a"]))
    await settle()
    first.cancel()
    later = asyncio.create_task(b.submit(["bb"]))
    await settle()
    assert model.calls == [["a"]]  # the thread-bound model is never run twice at once
    model.gate.set()
    out = await asyncio.wait_for(later, timeout=5)
    assert model.calls == [["a"], ["bb"]] and float(out[0, 1]) == 2.0
