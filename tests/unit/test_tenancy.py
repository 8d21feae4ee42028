"""API keys and per-key token buckets, with an injected clock (no sleeping)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tiergate.errors import ConfigError, ForbiddenError, RateLimitedError, UnauthorizedError
from tiergate.tenancy import KeyRing, RateLimit, Tenancy, add_key
from tiergate.tenancy.ratelimit import LocalRateLimiter, TokenBucket
from tiergate.testing import ManualClock


def test_a_new_key_authenticates_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = add_key(path, "team-a", rights=("predict",))
    text = path.read_text()
    assert key.startswith("tg_") and key not in text and key.split("_")[2] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing.load(path)
    assert ring.authenticate(f"Bearer {key}").name == "team-a"
    assert ring.authenticate(f"bearer   {key}  ").name == "team-a"


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Basic abc", "Bearer tg_000000000000_" + "A" * 43, "Bearer nonsense"],
)
def test_missing_or_unknown_keys_are_401_and_never_echoed(
    tmp_path: Path, header: str | None
) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "team-a")
    with pytest.raises(UnauthorizedError) as info:
        KeyRing.load(path).authenticate(header)
    token = (header or "").partition(" ")[2]
    if token:
        assert token not in str(info.value.to_dict())


def test_a_wrong_secret_with_a_real_id_is_401(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = add_key(path, "team-a")
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(UnauthorizedError):
        KeyRing.load(path).authenticate(f"Bearer {forged}")


def test_rights_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    old = add_key(path, "ops", rights=("metrics",))
    ring = KeyRing.load(path)
    tenant = ring.authenticate(f"Bearer {old}")
    tenant.require("metrics")
    with pytest.raises(ForbiddenError, match="no right to 'predict'"):
        tenant.require("predict")
    with pytest.raises(ConfigError, match="exists"):
        add_key(path, "ops")
    new = add_key(path, "ops", rights=("metrics",), replace=True)
    ring = KeyRing.load(path)
    assert ring.authenticate(f"Bearer {new}").name == "ops"
    with pytest.raises(UnauthorizedError):
        ring.authenticate(f"Bearer {old}")


def test_a_broken_keys_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  Bad Name: {id: x, salt: y, sha256: z}\n")
    with pytest.raises(ConfigError):
        KeyRing.load(path)
    with pytest.raises(ConfigError, match="not found"):
        KeyRing.load(tmp_path / "absent.yaml")


def test_token_bucket_refills_at_its_rate() -> None:
    b = TokenBucket(rate=2.0, capacity=3.0, now=0.0)
    for _ in range(3):
        assert b.wait(0.0) == 0.0
        b.tokens -= 1
    assert b.wait(0.0) == pytest.approx(0.5)
    assert b.wait(0.5) == 0.0
    assert b.level(100.0) == 3.0  # never above capacity


async def test_both_buckets_must_have_a_token_and_a_refusal_takes_none() -> None:
    clock = ManualClock()
    lim = LocalRateLimiter(clock)
    limit = RateLimit(per_second=10, burst=2, per_minute=3)
    assert await lim.acquire("k", limit) == 0.0
    assert await lim.acquire("k", limit) == 0.0
    wait = await lim.acquire("k", limit)  # the burst of 2 is spent
    assert wait == pytest.approx(0.1)
    clock.advance(0.1)
    assert await lim.acquire("k", limit) == 0.0  # third of the minute's 3
    clock.advance(0.2)
    wait = await lim.acquire("k", limit)  # per-second has tokens; per-minute is empty
    assert wait == pytest.approx(20.0 - 0.3, rel=1e-6)
    assert await lim.acquire("other", limit) == 0.0  # buckets are per key


async def test_tenancy_admits_counts_and_refuses_with_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = add_key(path, "team-a", rate_limit=RateLimit(per_second=1, burst=1))
    clock = ManualClock()
    t = Tenancy(KeyRing.load(path), LocalRateLimiter(clock))
    assert (await t.admit(f"Bearer {key}")).name == "team-a"  # type: ignore[union-attr]
    with pytest.raises(RateLimitedError) as info:
        await t.admit(f"Bearer {key}")
    assert info.value.retry_after_s == pytest.approx(1.0) and info.value.fields["key"] == "team-a"
    assert key not in str(info.value.to_dict())
    clock.advance(1.0)
    await t.admit(f"Bearer {key}")
    with pytest.raises(ForbiddenError):
        await t.admit(f"Bearer {key}", "metrics")


async def test_without_a_keys_file_the_service_is_open() -> None:
    t = Tenancy(None)
    assert not t.enabled and await t.admit(None) is None and t.describe() == {"auth": "open"}
