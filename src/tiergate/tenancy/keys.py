"""API keys: a keys file of salted hashes, ``Authorization: Bearer`` checked in O(1).

A key reads ``tg_<id>_<secret>``: ``id`` (12 hex digits) is public and finds the entry
without scanning the file; ``secret`` (32 random bytes, URL-safe base64) is checked
against ``sha256(salt || secret)`` with :func:`hmac.compare_digest` (constant time). A
fast hash is the right tool here: the secret is 256 random bits, not a password, so
there is nothing for a slow KDF to protect against, and the check runs on every request.

The file holds only hashes (``tiergate keys add NAME`` prints a new key once and writes
its hash), is written atomically with mode 0600, and names each key's rights::

    keys:
      team-a:
        id: 3f9a1c0e5b2d
        salt: 9c1e...            # 16 random bytes, hex
        sha256: 5b2d...          # of salt || secret, hex
        rights: [predict, usage] # predict, usage, metrics, docs, admin
        rate_limit: {per_second: 50, per_minute: 2000, burst: 100}
        budget: {amount: 10.0, period: day, on_exhausted: refuse}   # or degrade
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tiergate.config import format_validation_error
from tiergate.errors import ConfigError, ForbiddenError, UnauthorizedError
from tiergate.tenancy.budget import Budget

__all__ = ["KeyEntry", "KeyRing", "RateLimit", "Right", "Tenant", "add_key"]

Right = Literal["predict", "usage", "metrics", "docs", "admin"]
DEFAULT_RIGHTS: tuple[Right, ...] = ("predict", "usage")
_KEY_RE = re.compile(r"tg_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


class RateLimit(BaseModel):
    """Token buckets of one key: ``per_second`` refilled with room for ``burst``, and
    ``per_minute`` refilled evenly with room for a whole minute's worth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_second: float | None = Field(None, gt=0, description="Sustained requests per second.")
    per_minute: float | None = Field(None, gt=0, description="Requests per minute.")
    burst: float | None = Field(
        None, gt=0, description="Bucket size of the per-second limit (default: 1 s worth)."
    )


class KeyEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    salt: str = Field(pattern=r"^[0-9a-f]{32}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rights: tuple[Right, ...] = DEFAULT_RIGHTS
    rate_limit: RateLimit | None = None
    budget: Budget | None = None


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: dict[str, KeyEntry] = Field(default_factory=dict)

    @field_validator("keys")
    @classmethod
    def _names_and_ids(cls, v: dict[str, KeyEntry]) -> dict[str, KeyEntry]:
        for name in v:
            if not _NAME_RE.fullmatch(name):
                raise ValueError(f"key name {name!r}: lowercase letters, digits, . _ - only")
        ids = [e.id for e in v.values()]
        if len(set(ids)) != len(ids):
            raise ValueError("two keys share an id")
        return v


class Tenant:
    """The caller a key stands for (never the key itself)."""

    __slots__ = ("budget", "name", "rate_limit", "rights")

    def __init__(
        self,
        name: str,
        rights: tuple[Right, ...],
        rate_limit: RateLimit | None,
        budget: Budget | None = None,
    ):
        self.name = name
        self.rights = frozenset(rights)
        self.rate_limit = rate_limit
        self.budget = budget

    def __repr__(self) -> str:
        return f"Tenant({self.name!r})"

    def require(self, right: Right) -> None:
        if right not in self.rights:
            raise ForbiddenError(
                f"key {self.name!r} has no right to {right!r}", key=self.name, right=right
            )


def _digest(salt_hex: str, secret: str) -> bytes:
    return hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode("ascii")).digest()


class KeyRing:
    """The keys of one keys file, looked up by id and checked in constant time."""

    def __init__(self, entries: dict[str, KeyEntry], path: Path | None = None) -> None:
        self.path = path
        self._by_id = {e.id: (name, e, bytes.fromhex(e.sha256)) for name, e in entries.items()}
        self._tenants = {
            name: Tenant(name, e.rights, e.rate_limit, e.budget) for name, e in entries.items()
        }

    def _raw_entries(self) -> dict[str, KeyEntry]:
        return {name: e for name, e, _ in self._by_id.values()}

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"KeyRing({self.path}, {len(self)} keys)"

    @property
    def tenants(self) -> dict[str, Tenant]:
        return dict(self._tenants)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"keys file not found: {path}", path=str(path))
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            parsed = _KeysFile.model_validate(data)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, str(path))) from exc
        return cls(parsed.keys, path)

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of an ``Authorization`` header value; 401 if missing or wrong."""
        if not authorization:
            raise UnauthorizedError("missing API key: send `Authorization: Bearer <key>`")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError("the Authorization header must be `Bearer <key>`")
        m = _KEY_RE.fullmatch(token.strip())
        found = self._by_id.get(m.group(1)) if m else None
        if m is None or found is None:
            raise UnauthorizedError("unknown API key")
        name, entry, want = found
        if not hmac.compare_digest(_digest(entry.salt, m.group(2)), want):
            raise UnauthorizedError("unknown API key")
        return self._tenants[name]


def add_key(
    path: Path,
    name: str,
    *,
    rights: tuple[Right, ...] = DEFAULT_RIGHTS,
    rate_limit: RateLimit | None = None,
    budget: Budget | None = None,
    replace: bool = False,
) -> str:
    """Add key ``name`` to the keys file (created if absent); return the key, once."""
    path = Path(path)
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"key name {name!r}: lowercase letters, digits, . _ - only")
    entries = dict(KeyRing.load(path)._raw_entries()) if path.exists() else {}
    if name in entries and not replace:
        raise ConfigError(f"key {name!r} exists in {path} (pass --replace to rotate it)")
    ids = {e.id for n, e in entries.items() if n != name}
    key_id = secrets.token_hex(6)
    while key_id in ids:  # pragma: no cover - 48 random bits
        key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    entries[name] = KeyEntry(
        id=key_id, salt=salt, sha256=_digest(salt, secret).hex(), rights=rights,
        rate_limit=rate_limit, budget=budget,
    )  # fmt: skip
    body = {"keys": {n: e.model_dump(mode="json", exclude_none=True) for n, e in entries.items()}}
    text = "# tiergate keys file: salted hashes only; `tiergate keys add NAME` adds one.\n"
    text += yaml.safe_dump(body, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return f"tg_{key_id}_{secret}"
