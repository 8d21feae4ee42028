"""The open-loop schedule: exactly ``rate * duration`` requests, whatever the clock reads.

``max_connections=0`` sends every request down the client-saturation path, so
``run_load`` schedules and counts without opening a socket.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from tiergate.loadgen import open_loop_count, run_load

# perf_counter() is seconds since some arbitrary point (often boot): large on a machine
# that has been up a while, and the larger it is, the coarser start + i * interval rounds.
BASES = (0.0, 12_345.678, 86_400.0 * 365, 1e9 + 0.123)
RATES = (1, 2, 3, 5, 7, 10, 20, 25, 30, 40, 50, 60, 70, 80, 100, 150, 200, 250, 333, 1000)
DURATIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
PAIRS = [(r, d) for r in RATES for d in DURATIONS]
URL = "http://127.0.0.1:9/v1/predict"  # never contacted: max_connections=0
BODIES = [b'{"input": "x"}']


def expected(rate: float, duration_s: float) -> int:
    """Requests due in [0, duration): i / rate < duration, in exact arithmetic."""
    return math.ceil(Fraction(str(duration_s)) * Fraction(str(rate)))


class JumpClock:
    """Each reading is ``step`` later than the one before: the sender never needs to sleep."""

    def __init__(self, base: float, step: float) -> None:
        self.t = base
        self.step = step

    def __call__(self) -> float:
        now = self.t
        self.t += self.step
        return now


class VirtualTime:
    """A clock that only ``sleep`` moves."""

    def __init__(self, base: float) -> None:
        self.t = base
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.t += seconds


def test_count_of_the_reported_case() -> None:
    assert open_loop_count(50, 0.2) == 10


@pytest.mark.parametrize(("rate", "duration_s"), PAIRS)
def test_count_is_exact(rate: float, duration_s: float) -> None:
    assert open_loop_count(rate, duration_s) == expected(rate, duration_s)


def test_count_edges() -> None:
    assert open_loop_count(70, 0.1) == 7  # 70 * 0.1 == 7.000000000000001
    assert open_loop_count(3, 0.5) == 2  # sends at 0 and 1/3 s
    assert open_loop_count(0.5, 3.0) == 2  # sends at 0 and 2 s
    assert open_loop_count(1e6, 10.0) == 10_000_000
    assert open_loop_count(1e-6, 1e-6) == 1  # request 0 is due at once
    assert open_loop_count(50, 0.0) == 0
    assert open_loop_count(50, -1.0) == 0
    for rate in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            open_loop_count(rate, 1.0)
    with pytest.raises(ValueError):
        open_loop_count(1.0, math.inf)


@pytest.mark.parametrize("base", BASES)
async def test_run_load_sends_exactly_rate_times_duration(base: float) -> None:
    wrong = []
    for rate, duration_s in PAIRS:
        clock = JumpClock(base, step=duration_s + 1.0)
        res = await run_load(
            URL, BODIES, rate=rate, duration_s=duration_s, max_connections=0, clock=clock
        )
        n = expected(rate, duration_s)
        got = (res.sent, len(res.send_offsets_s), res.transport_errors["client_saturated"])
        if got != (n, n, n):
            wrong.append((rate, duration_s, res.sent, n))
    assert not wrong, f"(rate, duration, sent, expected) at clock {base}: {wrong}"


@pytest.mark.parametrize("base", BASES)
async def test_sends_on_the_index_grid_in_virtual_time(base: float) -> None:
    vt = VirtualTime(base)
    res = await run_load(
        URL, BODIES, rate=50, duration_s=0.2, max_connections=0, clock=vt.clock, sleep=vt.sleep
    )
    assert res.sent == 10 and res.mode == "open"
    assert res.send_offsets_s == [i / 50 for i in range(10)]
    # It slept until each send time and no longer: the last request left at 0.18 s.
    assert vt.t - base == pytest.approx(0.18, abs=1e-6)
    assert len(vt.slept) == 9


async def test_modes_are_checked() -> None:
    with pytest.raises(ValueError):
        await run_load(URL, BODIES, duration_s=0.1)
    with pytest.raises(ValueError):
        await run_load(URL, BODIES, rate=10, concurrency=2, duration_s=0.1)
    with pytest.raises(ValueError):
        await run_load(URL, BODIES, concurrency=0, duration_s=0.1)
    with pytest.raises(ValueError):
        await run_load(URL, BODIES, rate=0, duration_s=0.1)
