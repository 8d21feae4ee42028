"""Per-key budgets: reservations never overshoot, settle to the cent, degrade, periods.

(Shared budgets in a real Redis: tests/integration/test_budget_redis.py.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiergate.config import load_config
from tiergate.errors import BudgetExceededError
from tiergate.service import Service
from tiergate.tenancy import Budget, Budgets, Tenant
from tiergate.tenancy.budget import LocalBudgetStore, from_units, period_window, to_units


def _t(s: str) -> float:
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC).timestamp()


def test_periods_are_utc_calendar_windows() -> None:
    now = _t("2026-12-03T13:45:10")
    assert period_window("hour", now) == ("2026-12-03T13", _t("2026-12-03T14:00:00"))
    assert period_window("day", now) == ("2026-12-03", _t("2026-12-04T00:00:00"))
    assert period_window("week", now) == ("2026-W49", _t("2026-12-07T00:00:00"))  # Monday
    assert period_window("month", now) == ("2026-12", _t("2027-01-01T00:00:00"))
    assert period_window("total", now) == ("total", None)


def test_units_are_exact_to_the_cent_however_many_add_up() -> None:
    assert sum(to_units(0.01) for _ in range(50)) == to_units(0.5)
    assert sum(to_units(0.1) for _ in range(10)) == to_units(1.0)  # 0.1 * 10 != 1.0 in floats
    assert to_units(1e-9 * 2.5, up=True) == 3 and to_units(2e-9, up=True) == 2
    assert from_units(to_units(0.37)) == 0.37


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


async def test_concurrent_requests_never_overshoot_and_spend_equals_the_budget() -> None:
    budget = Budget(amount=0.5, period="day")
    b = Budgets(LocalBudgetStore(), wall=lambda: _t("2026-12-03T10:00:00"))
    ok = await _race([b], budget, 200, 0.01)
    assert sum(ok) == 50
    u = await b.usage("team", budget)
    assert u["spent"] == 0.5 and u["reserved"] == 0 and u["remaining"] == 0
    assert u["resets_at"] == "2026-12-04T00:00:00Z" and u["period_id"] == "2026-12-03"


async def test_a_reservation_settles_to_the_actual_cost_and_releases_the_rest() -> None:
    budget = Budget(amount=1.0, period="total")
    b = Budgets(LocalBudgetStore())
    r = await b.reserve("team", budget, [0.3, 0.9], 2)
    assert r.tiers == 2
    assert (await b.usage("team", budget))["reserved"] == 0.9
    await b.settle(r, budget, 0.3)  # the first tier answered: the escalation was not paid
    await b.settle(r, budget, 0.3)  # a second settle is a no-op
    u = await b.usage("team", budget)
    assert u["spent"] == 0.3 and u["reserved"] == 0 and u["remaining"] == 0.7
    assert u["resets_at"] is None


async def test_refusal_names_the_budget_what_is_left_and_when_it_resets() -> None:
    budget = Budget(amount=0.05, period="hour")
    b = Budgets(LocalBudgetStore(), wall=lambda: _t("2026-12-03T10:59:00"))
    await b.settle(await b.reserve("team", budget, [0.04], 1), budget, 0.04)
    with pytest.raises(BudgetExceededError) as info:
        await b.reserve("team", budget, [0.02], 1)
    f = info.value.fields
    assert f["key"] == "team" and f["budget"] == 0.05 and f["period"] == "hour"
    assert f["remaining"] == pytest.approx(0.01) and f["needed"] == 0.02
    assert f["resets_at"] == "2026-12-03T11:00:00Z"
    assert info.value.retry_after_s == 60.0
    assert "0.05 per hour" in info.value.message


async def test_degrade_reserves_the_tiers_the_budget_still_covers() -> None:
    budget = Budget(amount=0.015, period="day", on_exhausted="degrade")
    b = Budgets(LocalBudgetStore())
    first = await b.reserve("team", budget, [0.001, 0.011], 2)
    second = await b.reserve("team", budget, [0.001, 0.011], 2)
    assert (first.tiers, second.tiers) == (2, 1)  # 0.011 + 0.011 > 0.015: one tier only
    await b.settle(first, budget, 0.011)
    await b.settle(second, budget, 0.001)
    third = await b.reserve("team", budget, [0.001, 0.011], 2)
    assert third.tiers == 1
    await b.settle(third, budget, 0.001)
    b2 = Budgets(LocalBudgetStore())
    with pytest.raises(BudgetExceededError):  # not even the first tier fits
        await b2.reserve("t", Budget(amount=0.0005, on_exhausted="degrade"), [0.001, 0.01], 2)


def test_a_new_period_starts_from_zero() -> None:
    clock = {"now": _t("2026-12-03T23:59:59")}
    budget = Budget(amount=0.01, period="day")
    b = Budgets(LocalBudgetStore(), wall=lambda: clock["now"])

    async def go() -> None:
        await b.settle(await b.reserve("team", budget, [0.01], 1), budget, 0.01)
        with pytest.raises(BudgetExceededError):
            await b.reserve("team", budget, [0.01], 1)
        clock["now"] = _t("2026-12-04T00:00:01")
        await b.reserve("team", budget, [0.01], 1)

    asyncio.run(go())


CONFIG = """
service: budgeted
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.001
    threshold: 0.99
  - name: big
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.01
"""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    (tmp_path / "config.yaml").write_text(CONFIG)
    s = Service.from_config(load_config(tmp_path / "config.yaml"))
    yield s
    asyncio.run(s.aclose())
    s.close()


async def test_service_degrades_to_the_tier_the_budget_covers(service: Service) -> None:
    tenant = Tenant("team", ("predict",), None, Budget(amount=0.015, on_exhausted="degrade"))
    assert service.worst_costs(["a", "b"]) == pytest.approx([0.002, 0.022])
    full = await service.predict("a great film", tenant=tenant)  # 0.011 reserved, paid
    assert full.tier == "big" and full.degraded is None and full.cost == pytest.approx(0.011)
    cut = await service.predict("a dull film", tenant=tenant)  # 0.004 left: fast only
    assert cut.tier == "fast" and cut.degraded == "budget" and cut.path == ("fast",)
    hit = await service.predict("a great film", tenant=tenant)  # exact hit: free, no budget
    assert hit.cache == "exact" and hit.cost == 0
    u = await service.tenancy.budgets.usage("team", tenant.budget)  # type: ignore[arg-type]
    assert u["spent"] == 0.012 and u["reserved"] == 0
    refuse = Tenant("other", ("predict",), None, Budget(amount=0.015))
    await service.predict("one", tenant=refuse)
    with pytest.raises(BudgetExceededError):  # refuse mode: 0.004 left < 0.011 worst
        await service.predict("two", tenant=refuse)


async def test_a_batch_reserves_its_whole_worst_case(service: Service) -> None:
    tenant = Tenant("team", ("predict",), None, Budget(amount=0.05))
    with pytest.raises(BudgetExceededError):  # 5 x 0.011 > 0.05
        await service.predict_batch([f"t{i}" for i in range(5)], tenant=tenant)
    results = await service.predict_batch([f"t{i}" for i in range(4)], tenant=tenant)
    u = await service.tenancy.budgets.usage("team", tenant.budget)  # type: ignore[arg-type]
    assert u["spent"] == pytest.approx(sum(r.cost for r in results)) and u["reserved"] == 0
