"""Who may call the service, how often and for how much: keys, rights, limits, budgets.

:class:`Tenancy` is what the HTTP layer asks, once per request: with no keys file the
service is open (``enabled`` is False and nothing is checked); otherwise the
``Authorization`` header must carry a key from the keys file (401), the key must have
the route's right (403), and its rate limit must have a token left (429 +
``Retry-After``). Keys are checked locally even when Redis is down; only the rate
limits' and budgets' shared state lives in Redis (see :mod:`tiergate.tenancy.ratelimit`
and :mod:`tiergate.tenancy.budget`). Budgets are reserved and settled by the service
around the work itself (:meth:`Tenancy.reserve`, :meth:`Tenancy.settle`), after the
exact cache: a hit costs nothing and needs no budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tiergate.config import AuthConfig
from tiergate.errors import (
    BudgetExceededError,
    ForbiddenError,
    RateLimitedError,
    UnauthorizedError,
)
from tiergate.tenancy.budget import (
    Budget,
    Budgets,
    BudgetStore,
    LocalBudgetStore,
    RedisBudgetStore,
    Reservation,
)
from tiergate.tenancy.keys import KeyRing, RateLimit, Right, Tenant, add_key
from tiergate.tenancy.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter

__all__ = [
    "Budget",
    "Budgets",
    "KeyRing",
    "RateLimit",
    "Reservation",
    "Right",
    "Tenancy",
    "Tenant",
    "add_key",
]

log = logging.getLogger("tiergate.tenancy")


class Tenancy:
    """Keys, rights and rate limits of one service (see the module docstring)."""

    def __init__(
        self,
        keys: KeyRing | None,
        limiter: RateLimiter | None = None,
        *,
        protect: tuple[str, ...] = ("metrics", "docs"),
        metrics: Any = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.keys = keys
        self.limiter = limiter or LocalRateLimiter()
        self.budgets = budgets or Budgets(LocalBudgetStore(), metrics=metrics)
        self.protect = frozenset(protect)
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"Tenancy({self.keys!r}, {self.limiter!r})"

    @classmethod
    def from_config(cls, cfg: AuthConfig, base: Path | None, metrics: Any = None) -> Tenancy:
        path = cfg.resolved_keys_file(base)
        if path is None:
            return cls(None, metrics=metrics)
        keys = KeyRing.load(path)
        limiter: RateLimiter
        if cfg.rate_limit_store == "redis":
            fallback = metrics.shared_state_fallback_by("rate_limit") if metrics else None
            limiter = RedisRateLimiter(
                cfg.redis_url, on_fallback=fallback.inc if fallback is not None else None
            )
        else:
            limiter = LocalRateLimiter()
        store: BudgetStore = LocalBudgetStore()
        if (cfg.budget_store or cfg.rate_limit_store) == "redis":
            lost = metrics.shared_state_fallback_by("budget") if metrics else None
            store = RedisBudgetStore(
                cfg.redis_url, on_fallback=lost.inc if lost is not None else None
            )
        budgets = Budgets(store, metrics=metrics)
        return cls(keys, limiter, protect=cfg.protect, metrics=metrics, budgets=budgets)

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def describe(self) -> dict[str, Any]:
        """What ``/readyz`` and the start-up line say (names and counts, no secrets)."""
        if self.keys is None:
            return {"auth": "open"}
        shared = getattr(self.limiter, "shared", None)
        spent = getattr(self.budgets.store, "shared", None)
        budgeted = sum(t.budget is not None for t in self.keys.tenants.values())
        return {"auth": "keys", "keys": len(self.keys),
                "rate_limits": "redis" if shared is not None else "per process",
                **({"rate_limits_shared_now": shared} if shared is not None else {}),
                "budgets": {"keys": budgeted,
                            "store": "redis" if spent is not None else "per process",
                            **({"shared_now": spent} if spent is not None else {})}}  # fmt: skip

    def check(self, authorization: str | None, right: Right) -> Tenant | None:
        """Key and right only (for routes without rate limits); None when open."""
        if self.keys is None:
            return None
        try:
            tenant = self.keys.authenticate(authorization)
            tenant.require(right)
        except UnauthorizedError:
            self._rejected("unauthorized")
            raise
        except ForbiddenError:
            self._rejected("forbidden")
            raise
        return tenant

    async def admit(self, authorization: str | None, right: Right = "predict") -> Tenant | None:
        """Key, right and rate limit; raises the typed 401/403/429 error."""
        tenant = self.check(authorization, right)
        if tenant is None:
            return None
        if tenant.rate_limit is not None:
            wait = await self.limiter.acquire(tenant.name, tenant.rate_limit)
            if wait > 0:
                self._rejected("rate_limited")
                raise RateLimitedError(
                    f"rate limit of key {tenant.name!r} reached; retry in {wait:.2f} s",
                    retry_after_s=wait, key=tenant.name,
                )  # fmt: skip
        if self._metrics is not None:
            self._metrics.key_requests_by(tenant.name).inc()
        return tenant

    async def reserve(
        self, tenant: Tenant | None, worst: Callable[[], Sequence[float]], n_tiers: int
    ) -> Reservation | None:
        """Reserve a request's worst case on ``tenant``'s budget (None: no budget).

        ``worst()`` gives the worst-case cost of reaching 1, 2, … ``n_tiers`` tiers; it
        is called only for a key with a budget. Raises the 402 when nothing fits.
        """
        if tenant is None or tenant.budget is None:
            return None
        try:
            return await self.budgets.reserve(tenant.name, tenant.budget, worst(), n_tiers)
        except BudgetExceededError:
            self._rejected("budget")
            raise

    async def settle(self, tenant: Tenant, reservation: Reservation, actual: float) -> None:
        """Settle a reservation to what the request really cost; release the rest."""
        assert tenant.budget is not None
        await self.budgets.settle(reservation, tenant.budget, actual)

    async def usage(self, tenant: Tenant) -> dict[str, Any]:
        """``GET /v1/usage`` for the key itself: its limits, budget and spend."""
        limit = tenant.rate_limit
        return {
            "key": tenant.name,
            "rights": sorted(tenant.rights),
            "rate_limit": limit.model_dump(exclude_none=True) if limit is not None else None,
            "budget": (
                await self.budgets.usage(tenant.name, tenant.budget)
                if tenant.budget is not None else None
            ),
        }  # fmt: skip

    def _rejected(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.auth_rejected_by(reason).inc()

    async def aclose(self) -> None:
        close = getattr(self.limiter, "aclose", None)
        if close is not None:
            await close()
        await self.budgets.aclose()
