"""Budgets shared by replicas in a real Redis (Debian's ``redis-server`` on a free
loopback port); an outage is a SIGSTOP (a hung Redis: its data survives, and commands
sent meanwhile run when it wakes up) or a SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Iterator

import pytest

from tiergate.errors import BudgetExceededError
from tiergate.tenancy import Budget, Budgets
from tiergate.tenancy.budget import RedisBudgetStore
from tiergate.testing import ManualClock, RedisServer, free_port

pytestmark = pytest.mark.integration


async def _race(budgets: list[Budgets], budget: Budget, n: int, worst: float) -> list[bool]:
    """``n`` requests at once, spread over ``budgets`` (replicas); each settles at
    ``worst`` after a yield. Returns which were admitted."""

    async def one(i: int) -> bool:
        b = budgets[i % len(budgets)]
        try:
            r = await b.reserve("team", budget, [worst], 1)
        except BudgetExceededError:
            return False
        await asyncio.sleep(0)
        await b.settle(r, budget, worst)
        return True

    return list(await asyncio.gather(*(one(i) for i in range(n))))


needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


@needs_redis
async def test_two_replicas_share_one_budget_in_redis(redis: RedisServer) -> None:
    budget = Budget(amount=0.5, period="day")
    # 100 requests at once per replica on 4 connections each: the burst queues for a
    # connection, and queueing is not an outage (a slow loaded machine, not a slow Redis,
    # is what the generous socket timeout leaves out of this test).
    stores = [RedisBudgetStore(redis.url, max_connections=4, socket_timeout_s=2.0)
              for _ in range(2)]  # fmt: skip
    a, b = Budgets(stores[0]), Budgets(stores[1])
    try:
        ok = await _race([a, b], budget, 200, 0.01)
        assert [s.fallbacks for s in stores] == [0, 0]
        assert sum(ok) == 50
        for replica in (a, b):
            u = await replica.usage("team", budget)
            assert u["spent"] == 0.5 and u["reserved"] == 0 and u["shared"]
    finally:
        await a.aclose()
        await b.aclose()


@needs_redis
async def test_redis_outage_falls_back_per_process_and_pays_what_it_owes(
    redis: RedisServer,
) -> None:
    assert redis.proc is not None
    clock = ManualClock()
    lost: list[int] = []
    # hold_s=1: a reservation whose reply was lost is reclaimed after 1 s of Redis time.
    store = RedisBudgetStore(redis.url, clock=clock, hold_s=1.0, on_fallback=lambda: lost.append(1))
    other = RedisBudgetStore(redis.url)
    budget = Budget(amount=0.1, period="total")
    a, b = Budgets(store), Budgets(other)
    try:
        await a.settle(await a.reserve("team", budget, [0.03], 1), budget, 0.03)
        os.kill(redis.proc.pid, signal.SIGSTOP)  # hung: every call times out
        r = await a.reserve("team", budget, [0.03], 1)  # per process, from the seen 0.03
        assert not store.shared and lost == [1]
        await a.settle(r, budget, 0.02)
        await a.settle(await a.reserve("team", budget, [0.03], 1), budget, 0.03)
        with pytest.raises(BudgetExceededError):  # 0.03 + 0.02 + 0.03 + 0.03 > 0.1
            await a.reserve("team", budget, [0.03], 1)
        os.kill(redis.proc.pid, signal.SIGCONT)
        # The reservation that timed out ran when Redis woke up: 0.03 held, never spent.
        u = await b.usage("team", budget)
        assert u["spent"] == 0.03 and u["reserved"] == 0.03
        # Redis's own clock decides when it is reclaimed (it cannot be injected).
        await asyncio.sleep(1.2)
        clock.advance(1.5)  # past the back-off
        r = await a.reserve("team", budget, [0.01], 1)  # back: pays the 0.05 owed first
        assert store.shared
        await a.settle(r, budget, 0.01)
        u = await b.usage("team", budget)  # the other replica sees the outage's spend
        assert u["spent"] == 0.09 and u["reserved"] == 0
    finally:
        await a.aclose()
        await b.aclose()
