"""Per-key cost budgets with reservations: concurrent requests can never overshoot.

A key may have a budget (``amount`` per ``period``: hour, day, week, month, all in UTC,
or ``total``). Before a request runs, its **worst-case cost** is reserved: every tier it
may reach, for each input (an LLM tier's worst case is its whole prompt counted as one
token per byte, which no tokenizer exceeds, plus its ``max_tokens``). The reservation
succeeds only if ``spent + reserved + worst <= amount``, checked and recorded in one
atomic step. After the request, the reservation is **settled**: the actual cost moves
to ``spent`` and the rest is released. So however many requests race, the sum of what
they may spend never exceeds the budget, and a request is refused only when what is
left truly cannot cover its worst case.

``on_exhausted: degrade`` reserves instead the longest prefix of tiers the budget can
still cover: the request is answered by the cheaper tiers with ``degraded: "budget"``
when an escalation would not fit (refused only when not even the first tier fits).

Amounts are kept as integers of 10⁻⁹ (reservations rounded up, actual costs to the
nearest), so totals are exact to the cent however many requests add to them.

:class:`LocalBudgetStore` keeps the accounts in this process (with N replicas a key may
spend N times its budget). :class:`RedisBudgetStore` keeps them in Redis, one Lua script
per reservation and per settlement, shared by every replica. When Redis cannot be
reached it falls back to per-process accounting, starting from the last spend it saw in
Redis for that key (counted in ``tiergate_shared_state_fallback_total{what="budget"}``,
logged once per outage); when Redis answers again, what was spent meanwhile is added to
the shared account and reservations left open in Redis are released.

In Redis each reservation has an id and settles by that id exactly once (a settlement
retried after a timeout cannot count twice). One never settled, because its replica
died or a timeout hid that Redis ran it, holds its amount for ``hold_s`` (15 min by
default, above any deadline) and is then reclaimed; it is never counted as spent.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tiergate.errors import BudgetExceededError
from tiergate.tenancy._redis import shared_state_client, shared_state_slots

__all__ = [
    "Budget",
    "BudgetStore",
    "LocalBudgetStore",
    "Period",
    "RedisBudgetStore",
    "Reservation",
    "from_units",
    "period_window",
    "to_units",
]

log = logging.getLogger("tiergate.tenancy")

UNIT = 1e-9
"""One accounting unit, in the currency of ``cost_per_call``."""

Period = Literal["hour", "day", "week", "month", "total"]


class Budget(BaseModel):
    """What a key may spend per period, and what happens when it cannot cover a request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: float = Field(gt=0, description="What the key may spend per period.")
    period: Period = Field("day", description="hour, day, week, month (UTC) or total.")
    on_exhausted: Literal["refuse", "degrade"] = Field(
        "refuse",
        description="refuse: 402 budget_exceeded; degrade: answer from the cheaper tiers "
        "the budget still covers, with degraded: budget.",
    )


def to_units(amount: float, *, up: bool = False) -> int:
    """``amount`` in accounting units (rounded up for reservations)."""
    x = amount / UNIT
    return math.ceil(x - 1e-6) if up else round(x)


def from_units(units: int) -> float:
    return round(units * UNIT, 9)


def period_window(period: Period, now: float) -> tuple[str, float | None]:
    """``(id, end)`` of the period holding wall-clock time ``now`` (end None: never)."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "total":
        return "total", None
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(hours=1)
        ident = start.strftime("%Y-%m-%dT%H")
    elif period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(days=1)
        ident = start.strftime("%Y-%m-%d")
    elif period == "week":
        day = t.replace(hour=0, minute=0, second=0, microsecond=0)
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
        year, week, _ = start.isocalendar()
        ident = f"{year}-W{week:02d}"
    else:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        ident = start.strftime("%Y-%m")
    return ident, end.timestamp()


@dataclass(frozen=True, slots=True)
class Account:
    """One key's account in one period, as a store last saw it (units)."""

    spent: int
    reserved: int


class BudgetStore(Protocol):
    async def reserve(
        self, key: str, period: str, limit: int, amounts: Sequence[int], ttl_s: int | None
    ) -> tuple[int, Account, Any]:
        """Reserve the first of ``amounts`` that fits; ``(index + 1 or 0, account, token)``."""
        ...

    async def settle(
        self, key: str, period: str, reserved: int, actual: int, ttl_s: int | None, token: Any
    ) -> None: ...

    async def account(self, key: str, period: str) -> Account: ...


class LocalBudgetStore:
    """Accounts in this process (O(1) per request; one entry per key and period)."""

    def __init__(self) -> None:
        self._acc: dict[tuple[str, str], list[int]] = {}

    def _entry(self, key: str, period: str) -> list[int]:
        acc = self._acc.get((key, period))
        if acc is None:
            # Only the current period of each key is kept.
            for old in [k for k in self._acc if k[0] == key]:
                del self._acc[old]
            acc = self._acc[(key, period)] = [0, 0]
        return acc

    def reserve_now(
        self, key: str, period: str, limit: int, amounts: Sequence[int]
    ) -> tuple[int, Account]:
        acc = self._entry(key, period)
        for i, a in enumerate(amounts):
            if acc[0] + acc[1] + a <= limit:
                acc[1] += a
                return i + 1, Account(acc[0], acc[1])
        return 0, Account(acc[0], acc[1])

    def settle_now(self, key: str, period: str, reserved: int, actual: int) -> None:
        acc = self._entry(key, period)
        acc[1] = max(0, acc[1] - reserved)
        acc[0] += actual

    def add_spent(self, key: str, period: str, units: int) -> None:
        self._entry(key, period)[0] += units

    def peek(self, key: str, period: str) -> Account | None:
        acc = self._acc.get((key, period))
        return None if acc is None else Account(acc[0], acc[1])

    def forget(self, key: str, period: str) -> None:
        self._acc.pop((key, period), None)

    async def reserve(
        self, key: str, period: str, limit: int, amounts: Sequence[int], ttl_s: int | None
    ) -> tuple[int, Account, Any]:
        index, acc = self.reserve_now(key, period, limit, amounts)
        return index, acc, None

    async def settle(
        self, key: str, period: str, reserved: int, actual: int, ttl_s: int | None, token: Any
    ) -> None:
        self.settle_now(key, period, reserved, actual)

    async def account(self, key: str, period: str) -> Account:
        acc = self.peek(key, period)
        return acc if acc is not None else Account(0, 0)


# Each account is three keys (one hash tag, so a Redis Cluster keeps them together):
# ``acc`` (spent, reserved), ``open`` (a sorted set of open reservation ids by expiry,
# Redis time) and ``amt`` (each open reservation's amount). A reservation is settled by
# its id exactly once: settling an id that is not open changes nothing, so a settlement
# retried after a timeout cannot count twice. A reservation never settled (its replica
# died, or its reply was lost in a timeout although Redis ran it) is reclaimed once it
# expires, a few at a time by later reservations.
#
# KEYS: acc, open, amt. ARGV: limit, ttl (0: none), id, hold_s, then the amounts to try.
# Returns {index of the amount reserved (1-based) or 0, spent, reserved}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 8)
for _, id in ipairs(old) do
  local a = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  if a > 0 then redis.call('HINCRBY', KEYS[1], 'reserved', -a) end
end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
for i = 5, #ARGV do
  local a = tonumber(ARGV[i])
  if spent + reserved + a <= limit then
    if a > 0 then reserved = redis.call('HINCRBY', KEYS[1], 'reserved', a) end
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
    redis.call('HSET', KEYS[3], ARGV[3], a)
    if ttl > 0 then
      for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ttl) end
    end
    return {i - 4, spent, reserved}
  end
end
return {0, spent, reserved}
"""
# KEYS: acc, open, amt. ARGV: id, actual, extra spend (owed from an outage).
# (HINCRBY refuses "-0", Lua's negation of 0: only what is not zero is added.)
_SETTLE = """
local a = redis.call('HGET', KEYS[3], ARGV[1])
if a then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  a = tonumber(a)
  if a > 0 then redis.call('HINCRBY', KEYS[1], 'reserved', -a) end
  if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2]) end
end
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3]) end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if reserved < 0 then
  redis.call('HSET', KEYS[1], 'reserved', 0)
  reserved = 0
end
return {a and 1 or 0, spent, reserved}
"""

_LOCAL = "local"


class RedisBudgetStore:
    """Accounts in Redis, shared by every replica; per process while Redis is down."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tiergate:budget:",
        socket_timeout_s: float = 0.25,
        max_connections: int = 16,
        hold_s: float = 900.0,
        backoff_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        from redis.exceptions import RedisError

        self.url = url
        self._prefix = prefix
        self._client: Any = shared_state_client(url, socket_timeout_s, max_connections)
        # Every use of Redis holds a slot; the state is checked after the wait for one.
        self._slots = shared_state_slots(max_connections)
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._local = LocalBudgetStore()
        self._clock = clock
        # How long an unsettled reservation holds its amount (above any deadline).
        self._hold_s = hold_s
        self._backoff_s = backoff_s
        self._down_until: float | None = None
        self._on_fallback = on_fallback
        # What Redis last said of each account, the base of per-process accounting.
        self._seen: dict[tuple[str, str], Account] = {}
        # Owed to Redis once it is back: spend settled per process, and settlements of
        # shared reservations that could not be sent (id -> actual).
        self._owed: dict[tuple[str, str], int] = {}
        self._unsettled: dict[tuple[str, str], dict[str, int]] = {}
        self.fallbacks = 0

    def __repr__(self) -> str:
        return f"RedisBudgetStore({self.url!r}, shared={self.shared})"

    @property
    def shared(self) -> bool:
        return self._down_until is None

    def _keys(self, key: str, period: str) -> list[str]:
        tag = f"{self._prefix}{{{key}:{period}}}"
        return [f"{tag}:acc", f"{tag}:open", f"{tag}:amt"]

    def _went_down(self, exc: BaseException) -> None:
        if self._down_until is None:
            log.warning("redis at %s unreachable (%s): budgets per process until it is back",
                        self.url, type(exc).__name__)  # fmt: skip
            # A new outage starts from what Redis last said, not from an older outage.
            self._local = LocalBudgetStore()
        self._down_until = self._clock() + self._backoff_s

    async def _came_back(self) -> bool:
        """Pay what is owed; False if Redis failed again meanwhile."""
        accounts = set(self._owed) | set(self._unsettled)
        for acct in accounts:
            owed = self._owed.pop(acct, 0)
            pending = self._unsettled.pop(acct, {})
            keys = self._keys(*acct)
            try:
                for rid, actual in list(pending.items()):
                    await self._settle(keys=keys, args=[rid, actual, 0])
                    del pending[rid]
                if owed:
                    await self._settle(keys=keys, args=["", 0, owed])
                    owed = 0
            except self._errors as exc:  # down again: keep what is still owed
                if owed:
                    self._owed[acct] = self._owed.get(acct, 0) + owed
                if pending:
                    self._unsettled.setdefault(acct, {}).update(pending)
                self._went_down(exc)
                return False
        if self._down_until is not None:
            log.warning("redis at %s is back: budgets shared again", self.url)
            self._down_until = None
        return True

    def _fallback_reserve(
        self, key: str, period: str, limit: int, amounts: Sequence[int]
    ) -> tuple[int, Account, Any]:
        self.fallbacks += 1
        if self._on_fallback is not None:
            self._on_fallback()
        if self._local.peek(key, period) is None:
            seen = self._seen.get((key, period))
            if seen is not None:  # start from the shared spend (its reservations too)
                self._local.add_spent(key, period, seen.spent + seen.reserved)
        index, acc = self._local.reserve_now(key, period, limit, amounts)
        return index, acc, _LOCAL

    async def reserve(
        self, key: str, period: str, limit: int, amounts: Sequence[int], ttl_s: int | None
    ) -> tuple[int, Account, Any]:
        async with self._slots:
            return await self._reserve_in_slot(key, period, limit, amounts, ttl_s)

    async def _reserve_in_slot(
        self, key: str, period: str, limit: int, amounts: Sequence[int], ttl_s: int | None
    ) -> tuple[int, Account, Any]:
        if self._down_until is not None and self._clock() < self._down_until:
            return self._fallback_reserve(key, period, limit, amounts)
        if (self._down_until is not None or self._owed or self._unsettled) and not (
            await self._came_back()
        ):
            return self._fallback_reserve(key, period, limit, amounts)
        rid = secrets.token_hex(8)
        try:
            index, spent, reserved = await self._reserve(
                keys=self._keys(key, period),
                args=[limit, ttl_s or 0, rid, self._hold_s, *amounts],
            )
        except self._errors as exc:
            # Redis may still have run it: then the reservation expires after hold_s.
            self._went_down(exc)
            return self._fallback_reserve(key, period, limit, amounts)
        acc = Account(int(spent), int(reserved))
        self._seen[(key, period)] = acc
        return int(index), acc, rid

    async def settle(
        self, key: str, period: str, reserved: int, actual: int, ttl_s: int | None, token: Any
    ) -> None:
        async with self._slots:
            await self._settle_in_slot(key, period, reserved, actual, ttl_s, token)

    async def _settle_in_slot(
        self, key: str, period: str, reserved: int, actual: int, ttl_s: int | None, token: Any
    ) -> None:
        acct = (key, period)
        if token == _LOCAL:
            self._local.settle_now(key, period, reserved, actual)
            if actual:
                self._owed[acct] = self._owed.get(acct, 0) + actual
            if self._down_until is None:
                await self._came_back()
            return
        if self._down_until is not None and self._clock() < self._down_until:
            self._unsettled.setdefault(acct, {})[token] = actual
            return
        try:
            _, spent, left = await self._settle(keys=self._keys(key, period),
                                                args=[token, actual, 0])  # fmt: skip
        except self._errors as exc:
            # Settling by id is idempotent: sent again once Redis is back.
            self._went_down(exc)
            self._unsettled.setdefault(acct, {})[token] = actual
            return
        self._seen[acct] = Account(int(spent), int(left))

    async def account(self, key: str, period: str) -> Account:
        async with self._slots:
            return await self._account_in_slot(key, period)

    async def _account_in_slot(self, key: str, period: str) -> Account:
        if self._down_until is None:
            try:
                spent, reserved = await self._client.hmget(
                    self._keys(key, period)[0], "spent", "reserved"
                )
                return Account(int(spent or 0), int(reserved or 0))
            except self._errors as exc:
                self._went_down(exc)
        local = self._local.peek(key, period)
        if local is not None:
            return local
        return self._seen.get((key, period), Account(0, 0))

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()


@dataclass(slots=True)
class Reservation:
    """What one request reserved; :meth:`Budgets.settle` it exactly once."""

    key: str
    period: str
    units: int
    tiers: int
    token: Any
    settled: bool = False


class Budgets:
    """Reserve before, settle after, for every key with a budget (see module docstring)."""

    def __init__(
        self,
        store: BudgetStore,
        *,
        wall: Callable[[], float] = time.time,
        metrics: Any = None,
    ) -> None:
        self.store = store
        self._wall = wall
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"Budgets({self.store!r})"

    def _ttl(self, end: float | None, now: float) -> int | None:
        # An account outlives its period by a day (for /v1/usage right after a reset).
        return None if end is None else math.ceil(end - now) + 86400

    async def reserve(
        self, key: str, budget: Budget, worst: Sequence[float], n_tiers: int
    ) -> Reservation:
        """Reserve ``worst[k-1]``, the worst case of reaching ``k`` tiers, for the largest
        ``k`` allowed (all ``n_tiers`` when refusing); raise the 402 when none fits."""
        now = self._wall()
        period, end = period_window(budget.period, now)
        limit = to_units(budget.amount)
        candidates = list(range(n_tiers, 0, -1)) if budget.on_exhausted == "degrade" else [n_tiers]
        amounts = [to_units(worst[k - 1], up=True) for k in candidates]
        index, acc, token = await self.store.reserve(
            key, period, limit, amounts, self._ttl(end, now)
        )
        self._remaining(key, limit, acc)
        if index == 0:
            left = max(0, limit - acc.spent - acc.reserved)
            retry = None if end is None else max(1.0, end - now)
            raise BudgetExceededError(
                f"budget of key {key!r} ({budget.amount:g} per {budget.period}) cannot cover "
                f"this request: {from_units(left):.6g} left, the request may cost up to "
                f"{from_units(amounts[-1]):.6g}"
                + ("" if end is None else f"; resets at {_iso(end)}"),
                retry_after_s=retry if retry is not None else 3600.0,
                key=key, budget=budget.amount, period=budget.period,
                remaining=from_units(left), needed=from_units(amounts[-1]),
                resets_at=None if end is None else _iso(end),
            )  # fmt: skip
        return Reservation(key, period, amounts[index - 1], candidates[index - 1], token)

    async def settle(self, r: Reservation, budget: Budget, actual: float) -> None:
        if r.settled:
            return
        r.settled = True
        units = min(to_units(actual), r.units)  # never more than was reserved
        now = self._wall()
        _, end = period_window(budget.period, now)
        await self.store.settle(r.key, r.period, r.units, units, self._ttl(end, now), r.token)
        if self._metrics is not None and units:
            self._metrics.key_spend_by(r.key).inc(from_units(units))

    async def usage(self, key: str, budget: Budget) -> dict[str, Any]:
        now = self._wall()
        period, end = period_window(budget.period, now)
        acc = await self.store.account(key, period)
        limit = to_units(budget.amount)
        self._remaining(key, limit, acc)
        return {
            "amount": budget.amount, "period": budget.period, "period_id": period,
            "on_exhausted": budget.on_exhausted,
            "spent": from_units(acc.spent), "reserved": from_units(acc.reserved),
            "remaining": from_units(max(0, limit - acc.spent - acc.reserved)),
            "resets_at": None if end is None else _iso(end),
            "shared": bool(getattr(self.store, "shared", False)),
        }  # fmt: skip

    def _remaining(self, key: str, limit: int, acc: Account) -> None:
        if self._metrics is not None:
            self._metrics.key_budget_remaining_by(key).set(
                from_units(max(0, limit - acc.spent - acc.reserved))
            )

    async def aclose(self) -> None:
        close = getattr(self.store, "aclose", None)
        if close is not None:
            await close()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
