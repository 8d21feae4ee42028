"""The HTTP side of a remote tier: one pooled client, bounded concurrency, typed failures.

Every remote adapter (OpenAI-compatible LLMs, KServe V2 model servers) talks to its
server through one :class:`Upstream`: an ``httpx.AsyncClient`` with a connection limit,
keep-alive, separate connect and read timeouts, and a semaphore bounding the calls in
flight. Failures come out as :class:`~tiergate.errors.UpstreamError` saying how the
cascade should react (retry within the budget, count against the breaker, back off for a
``Retry-After``). A cancelled call (its request's deadline passed) is abandoned: httpx
closes the connection it was using, so a half-read response is never reused.

The API key is sent as ``Authorization: Bearer`` and appears nowhere else: not in
``repr``, errors, logs or ``status()``.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from tiergate.config import HttpConfig
from tiergate.errors import UpstreamError

__all__ = ["Upstream"]

_DEFAULT_BACK_OFF_S = 1.0
_MAX_BACK_OFF_S = 300.0
_BODY_IN_ERRORS = 300


class _PerLoop:
    """Client and semaphore of one event loop (asyncio objects cannot cross loops)."""

    __slots__ = ("client", "loop", "semaphore")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, n: int):
        self.loop = loop
        self.client = client
        self.semaphore = asyncio.Semaphore(n)


class Upstream:
    """One remote server, as a tier sees it.

    >>> up = Upstream("http://127.0.0.1:8080", HttpConfig(), name="llm")
    >>> body = await up.post("/v1/completions", {"prompt": "hi"})  # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str,
        http: HttpConfig,
        *,
        name: str,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.name = name
        self._headers = dict(http.headers)
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._clock = clock
        self._state: _PerLoop | None = None
        self.calls = 0
        self.failures = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"Upstream({self.name!r}, {self.base_url!r})"

    def _local(self) -> _PerLoop:
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:
            h = self.http
            client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers,
                timeout=httpx.Timeout(
                    h.read_timeout_ms / 1000.0,
                    connect=h.connect_timeout_ms / 1000.0,
                    pool=h.read_timeout_ms / 1000.0,
                ),
                limits=httpx.Limits(
                    max_connections=h.max_connections,
                    max_keepalive_connections=h.max_connections,
                    keepalive_expiry=30.0,
                ),
                transport=self._transport,
                trust_env=False,  # loopback and cluster peers: no proxies from the env
            )
            state = self._state = _PerLoop(loop, client, h.max_concurrency)
        return state

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON, return the JSON object answered; raises :class:`UpstreamError`."""
        state = self._local()
        async with state.semaphore:
            self.calls += 1
            try:
                resp = await state.client.post(
                    path, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
                )
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from None
        return self._json(resp)

    async def get_status(self, path: str) -> int:
        """GET ``path``; the status code, or 0 if the server cannot be reached."""
        state = self._local()
        try:
            resp = await state.client.get(path)
        except httpx.HTTPError as exc:
            self.last_error = _describe(exc)
            return 0
        return resp.status_code

    async def get_json(self, path: str) -> dict[str, Any]:
        """GET JSON; raises :class:`UpstreamError`."""
        state = self._local()
        try:
            resp = await state.client.get(path)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        return self._json(resp)

    async def aclose(self) -> None:
        state, self._state = self._state, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.client.aclose()

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` shows: address, calls, failures, the last error (no secrets)."""
        return {
            "base_url": self.base_url,
            "calls": self.calls,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def _fail(self, message: str, **kw: Any) -> UpstreamError:
        self.failures += 1
        self.last_error = message
        return UpstreamError(f"tier {self.name!r}: {message}", tier=self.name, **kw)

    def _transport_error(self, exc: httpx.HTTPError) -> UpstreamError:
        # Refused, reset or timed out: the upstream is unwell (breaker). A reset on a
        # kept-alive connection is worth one retry; a refusal or a timeout is not.
        retryable = isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError)
        return self._fail(_describe(exc), retryable=retryable, unhealthy=True)

    def _json(self, resp: httpx.Response) -> dict[str, Any]:
        status = resp.status_code
        if status >= 400:
            raise self._status_error(resp)
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise self._fail(
                f"upstream answered {status} with a body that is not JSON: {resp.content[:80]!r}",
                status=status,
            ) from None
        if not isinstance(body, dict):
            raise self._fail(f"upstream answered {status} with JSON that is not an object")
        return body

    def _status_error(self, resp: httpx.Response) -> UpstreamError:
        status = resp.status_code
        detail = _error_detail(resp)
        after = _retry_after(resp.headers.get("retry-after"), self._clock())
        if status == 429 or (status == 503 and after is not None):
            # Flow control, not ill health: pause the tier as asked, never retry now.
            return self._fail(
                f"upstream asked to back off ({status}): {detail}",
                status=status, unhealthy=False,
                retry_after_s=after if after is not None else _DEFAULT_BACK_OFF_S,
            )  # fmt: skip
        if status >= 500:
            return self._fail(f"upstream error {status}: {detail}", status=status, retryable=True)
        # A 4xx is about this request (bad request, context too long): no retry, and
        # not the upstream's health either.
        return self._fail(f"upstream refused the request ({status}): {detail}",
                          status=status, unhealthy=False)  # fmt: skip


def _describe(exc: httpx.HTTPError) -> str:
    kind = {
        httpx.ConnectError: "connection refused or unreachable",
        httpx.ConnectTimeout: "connect timeout",
        httpx.ReadTimeout: "read timeout",
        httpx.PoolTimeout: "no free connection in the pool",
        httpx.ReadError: "connection reset while reading",
        httpx.WriteError: "connection reset while writing",
        httpx.RemoteProtocolError: "connection closed mid-response",
    }
    for cls, text in kind.items():
        if isinstance(exc, cls):
            return text
    return type(exc).__name__


def _error_detail(resp: httpx.Response) -> str:
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return resp.content[:_BODY_IN_ERRORS].decode("utf-8", "replace").strip() or "(no body)"
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        msg = err.get("message") or err.get("error") or err
        return str(msg)[:_BODY_IN_ERRORS]
    return str(err)[:_BODY_IN_ERRORS]


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), _MAX_BACK_OFF_S)
