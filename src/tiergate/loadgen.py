"""Load generator behind `tiergate bench`: open-loop (fixed arrival rate) or closed-loop.

Open-loop mode sends requests at their scheduled times whether or not earlier ones
have returned, and measures each latency from the *intended* send time, so a stalled
server shows up as latency instead of silently lowering the offered load (the
"coordinated omission" trap of closed-loop tools). Closed-loop mode (``concurrency``)
keeps C requests in flight, like wrk.

An open-loop run is scheduled by index: :func:`open_loop_count` fixes the number of
requests up front as an integer and request ``i`` is due ``i / rate`` seconds after the
start. (Comparing ``start + i * interval`` against the end of the run instead lets float
rounding, which grows with the clock's value, add or drop a request at the boundary.)

The HTTP/1.1 client is a minimal keep-alive client on asyncio streams: a generic
client costs more CPU per request than the gateway itself on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

__all__ = ["LoadResult", "open_loop_count", "run_load", "summarize"]

_MAX_IDLE_S = 4.0  # below uvicorn's default 5 s keep-alive timeout
_COUNT_TOLERANCE = 1e-9  # relative; far above float noise, far below one request


def open_loop_count(rate: float, duration_s: float) -> int:
    """How many requests an open-loop run at ``rate`` req/s for ``duration_s`` sends.

    Request ``i`` is due at ``i / rate`` s; the run sends every request due in
    ``[0, duration_s)``, that is ``ceil(rate * duration_s)``, except that a product
    within a relative 1e-9 of an integer counts as that integer: float noise never adds
    or drops a request (``70 * 0.1`` is ``7.000000000000001``, and 7 requests go out).

    >>> open_loop_count(50, 0.2), open_loop_count(70, 0.1), open_loop_count(3, 0.5)
    (10, 7, 2)
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of requests/s, not {rate!r}")
    if not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be finite, not {duration_s!r}")
    x = rate * duration_s
    if x <= 0:
        return 0
    k = round(x)
    if k > 0 and abs(x - k) <= _COUNT_TOLERANCE * x:
        return int(k)
    return math.ceil(x)  # at least 1: request 0 is due at once


@dataclass
class LoadResult:
    """Raw outcome of a load run."""

    latencies_s: list[float] = field(default_factory=list)
    send_offsets_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)
    degraded: Counter[str] = field(default_factory=Counter)
    caches: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    error_reasons: Counter[str] = field(default_factory=Counter)  # 5xx: "status type reason"
    duration_s: float = 0.0
    sent: int = 0
    mode: str = ""
    target_rate: float | None = None
    concurrency: int | None = None
    server_latency_ms: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    responses: list[tuple[int, bytes]] = field(default_factory=list)
    status_latencies: list[tuple[int, float]] = field(default_factory=list)
    stale_retries: int = 0
    late_sends: int = 0  # open loop: sent after their due time (all connections were busy)


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.used = False
        self.last_used = 0.0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.used = True
        self.writer.write(head + body)
        # One read for the whole head (status line and headers), parsed in place: a
        # readline per header line costs the generator more CPU than the server spends.
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ConnectionResetError("server closed the connection") from None
            raise
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value.strip())
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.used = False


def _head(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()


async def run_load(
    url: str,
    bodies: Sequence[bytes],
    *,
    rate: float | None = None,
    concurrency: int | None = None,
    duration_s: float = 10.0,
    timeout_s: float = 10.0,
    max_connections: int = 64,
    keep_responses: bool = False,
    progress: Callable[[float, LoadResult], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> LoadResult:
    """Drive ``url`` (a POST endpoint) with ``bodies`` (cycled) for ``duration_s``.

    Give ``rate`` (requests/s, open loop: exactly :func:`open_loop_count` requests) or
    ``concurrency`` (closed loop). ``clock`` and ``sleep`` set the time base.
    """
    if (rate is None) == (concurrency is None):
        raise ValueError("give exactly one of rate or concurrency")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    n_open = open_loop_count(rate, duration_s) if rate is not None else 0
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    heads = [_head(host, port, path, b) for b in bodies]
    res = LoadResult(
        mode="open" if rate is not None else "closed", target_rate=rate, concurrency=concurrency
    )
    idle: list[_Conn] = []
    n_conns = 0
    start = clock()

    def record(intended: float, offset: float, status: int, payload: bytes) -> None:
        res.latencies_s.append(clock() - intended)
        res.status_latencies.append((status, res.latencies_s[-1]))
        res.send_offsets_s.append(offset)
        res.statuses[status] += 1
        if keep_responses:
            res.responses.append((status, payload))
        if status == 200 and payload:
            _count(res, payload)
        elif status >= 500 and payload:
            res.error_reasons[_error_reason(status, payload)] += 1

    async def one(i: int, intended: float, offset: float) -> None:
        nonlocal n_conns
        conn = idle.pop() if idle else None
        if conn is not None and clock() - conn.last_used > _MAX_IDLE_S:
            conn.close()  # the server may have closed it (keep-alive timeout): start afresh
        if conn is None:
            n_conns += 1
            conn = _Conn(host, port)
        k = i % len(bodies)
        for attempt in (0, 1):
            reused = conn.used
            try:
                async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
                    status, payload = await conn.request(heads[k], bodies[k])
                break
            except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
                conn.close()
                # A kept-alive connection the server closed in the meantime: resend once on
                # a new one, as HTTP clients do. A fresh connection failing is an error.
                if reused and attempt == 0:
                    res.stale_retries += 1
                    continue
                failure: BaseException = e
            except (TimeoutError, OSError, ValueError, IndexError) as e:
                conn.close()
                failure = e
            res.transport_errors[type(failure).__name__] += 1
            res.latencies_s.append(clock() - intended)
            res.send_offsets_s.append(offset)
            n_conns -= 1
            return
        conn.last_used = clock()
        record(intended, offset, status, payload)
        idle.append(conn)

    tasks: set[asyncio.Task[None]] = set()
    last_report = start
    if rate is not None:
        # The count is fixed up front; the send time is for sleeping only. Each wake-up
        # sends every request due by then (latency still counts from each one's own due
        # time), so the generator's cost does not include a sleep per request. At most
        # ``max_connections`` requests are in flight, as with wrk2's fixed connections: a
        # request due while all are busy waits in a queue and goes out on the next free
        # connection, its latency still counted from its due time; one that waited
        # longer than ``timeout_s`` counts as ``client_saturated`` and is not sent.
        backlog: deque[int] = deque()

        async def chain(j: int) -> None:
            await one(j, start + j / rate, j / rate)
            while backlog:
                k = backlog.popleft()
                offset = k / rate
                if clock() - (start + offset) > timeout_s:
                    res.transport_errors["client_saturated"] += 1
                    res.latencies_s.append(timeout_s)
                    res.send_offsets_s.append(offset)
                    continue
                res.late_sends += 1
                await one(k, start + offset, offset)

        i = 0
        while i < n_open:
            elapsed = clock() - start
            due = min(n_open, int(elapsed * rate) + 1)
            if due <= i:
                wait = i / rate - elapsed
                if wait > 0:
                    await sleep(wait)
                # Request i is due now, whatever float rounding makes of the clock.
                due = max(i + 1, min(n_open, int((clock() - start) * rate) + 1))
            for j in range(i, due):
                if len(tasks) < max_connections:
                    t = asyncio.create_task(chain(j))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                elif max_connections == 0:  # no connection may ever open: count only
                    res.transport_errors["client_saturated"] += 1
                    res.latencies_s.append(timeout_s)
                    res.send_offsets_s.append(j / rate)
                else:
                    backlog.append(j)
            i = res.sent = due
            if progress and clock() - last_report > 1.0:
                last_report = clock()
                progress(last_report - start, res)
            await asyncio.sleep(0)  # a yield, not a wait: the new requests go out first
    else:
        assert concurrency is not None
        counter = iter(range(1 << 62))

        async def worker() -> None:
            # Closed loop: the count is whatever completes in the time, by design.
            while clock() - start < duration_s:
                i = next(counter)
                res.sent = i + 1
                now = clock()
                await one(i, now, now - start)

        async def reporter() -> None:
            while clock() - start < duration_s:
                await sleep(1.0)
                if progress:
                    progress(clock() - start, res)

        rep = asyncio.create_task(reporter())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rep.cancel()
    if tasks:
        # Queued requests older than timeout_s are dropped unsent, so this ends.
        await asyncio.wait(tasks, timeout=2 * timeout_s + 1)
    res.duration_s = clock() - start
    for c in idle:
        c.close()
    return res


def _error_reason(status: int, payload: bytes) -> str:
    """``"504 deadline_exceeded deadline path=fast"`` from a tiergate error body."""
    try:
        err = orjson.loads(payload).get("error", {})
    except (orjson.JSONDecodeError, AttributeError):
        return f"{status} unparsed"
    if not isinstance(err, dict):
        return f"{status} unparsed"
    path = err.get("path")
    where = f" path={'>'.join(map(str, path)) or '-'}" if isinstance(path, list) else ""
    return f"{status} {err.get('type', '?')} {err.get('reason', '-')}{where}"


def _count(res: LoadResult, payload: bytes) -> None:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    if not isinstance(body, dict):
        return
    items = body.get("results", [body])
    for item in items:
        res.tiers[str(item.get("tier"))] += 1
        if item.get("degraded"):
            res.degraded[str(item["degraded"])] += 1
        if item.get("cache"):
            res.caches[str(item["cache"])] += 1
        if "latency_ms" in item:
            res.server_latency_ms.append(float(item["latency_ms"]))
        if "cost" in item:
            res.costs.append(float(item["cost"]))


def summarize(res: LoadResult) -> dict[str, Any]:
    """Throughput, latency percentiles (ms) and counts, as `tiergate bench` writes them."""
    lat = np.asarray(res.latencies_s) * 1000.0
    ok = sum(c for s, c in res.statuses.items() if s < 400)
    pct = {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99, 99.9)} if lat.size else {}
    completed = sum(res.statuses.values())
    return {
        "mode": res.mode,
        "target_rate": res.target_rate,
        "concurrency": res.concurrency,
        "duration_s": res.duration_s,
        "sent": res.sent,
        "completed": completed,
        "throughput_rps": completed / res.duration_s if res.duration_s else 0.0,
        "ok_rps": ok / res.duration_s if res.duration_s else 0.0,
        "latency_ms": {**pct, "mean": float(lat.mean()) if lat.size else None,
                       "max": float(lat.max()) if lat.size else None},
        "statuses": {str(k): v for k, v in sorted(res.statuses.items())},
        "errors_5xx": sum(c for s, c in res.statuses.items() if s >= 500),
        "transport_errors": dict(res.transport_errors),
        "error_reasons": dict(res.error_reasons),
        "stale_connection_retries": res.stale_retries,
        "late_sends": res.late_sends,
        "tiers": dict(res.tiers),
        "degraded": dict(res.degraded),
        "cache": dict(res.caches),
        "mean_cost": float(np.mean(res.costs)) if res.costs else None,
        "latency_ms_by_status": {
            str(code): {
                "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
            }
            for code in sorted({c for c, _ in res.status_latencies})
            if (v := np.asarray([t * 1000.0 for c, t in res.status_latencies if c == code])).size
        },
    }  # fmt: skip
