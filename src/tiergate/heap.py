"""The serving process's heap: freeze what lives forever, tune the collector, time its pauses.

A loaded service holds a few hundred thousand GC-tracked objects (models, tokenizers,
pydantic and FastAPI machinery) that live as long as the process. CPython's full
(generation 2) collection walks all of them: ~60 ms on the demo, stopping every request.
:func:`prepare_for_serving` collects once after start-up and moves those objects to the
permanent generation (``gc.freeze()``), so later collections walk only what was allocated
since; :class:`GcWatch` times every collection through ``gc.callbacks`` so an operator sees
the pauses (``tiergate_gc_pause_seconds{generation}``) instead of guessing at a tail.

A pause is timed twice: on the wall clock (what the requests waiting on the event loop
saw) and on the collecting thread's CPU clock (``tiergate_gc_cpu_seconds``: the
collector's own work). On a loaded machine with more runnable threads than cores, the
scheduler can preempt the thread in the middle of a sub-millisecond collection and the
wall time then holds milliseconds of someone else's work; the pair tells a collector that
walks too much (both long) from a machine that is oversubscribed (wall long, CPU short).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["GcPolicy", "GcWatch", "PauseSink", "prepare_for_serving"]


class PauseSink(Protocol):
    """Where :class:`GcWatch` reports a pause (a Prometheus histogram child fits)."""

    def __call__(self, generation: int, seconds: float, cpu_seconds: float) -> None: ...


@dataclass(frozen=True)
class GcPolicy:
    """Collector thresholds for a serving process.

    A request allocates a few hundred short-lived container objects, nearly all freed by
    reference counting before the request ends; the default ``threshold0`` of 700 still
    collects every few requests under load. 5,000 made steady load run with no
    collections at all (bench/hotpath.py), while a young collection, when a backlog does
    build up, walks at most a few thousand objects; ``threshold1``/``threshold2`` keep
    CPython's ratios.
    """

    threshold0: int = 5_000
    threshold1: int = 10
    threshold2: int = 10
    freeze: bool = True

    def __post_init__(self) -> None:
        if self.threshold0 < 1 or self.threshold1 < 1 or self.threshold2 < 1:
            raise ValueError("GC thresholds must be >= 1")


class GcWatch:
    """Times every garbage collection of this process and hands it to ``sink``.

    >>> watch = GcWatch(lambda gen, s: print(gen, s)).install()  # doctest: +SKIP
    >>> watch.uninstall()  # doctest: +SKIP
    """

    def __init__(
        self,
        sink: PauseSink,
        *,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._started = 0.0
        self._cpu_started = 0.0
        self.collections = 0
        self.longest_s = 0.0
        self.longest_cpu_s = 0.0

    def __repr__(self) -> str:
        return (
            f"GcWatch(collections={self.collections}, longest_s={self.longest_s:.6f}, "
            f"longest_cpu_s={self.longest_cpu_s:.6f})"
        )

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            self._cpu_started = self._cpu_clock()
            return
        seconds = self._clock() - self._started
        cpu = self._cpu_clock() - self._cpu_started
        self.collections += 1
        self.longest_s = max(self.longest_s, seconds)
        self.longest_cpu_s = max(self.longest_cpu_s, cpu)
        self._sink(int(info.get("generation", -1)), seconds, cpu)

    def install(self) -> GcWatch:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def prepare_for_serving(policy: GcPolicy = GcPolicy()) -> int:
    """Collect once, freeze the survivors, set thresholds; returns the frozen count.

    Call it after the models are loaded and before traffic: everything alive then is
    treated as immortal by the collector (it is still freed by reference counting).
    """
    gc.collect()
    if policy.freeze:
        gc.freeze()
    gc.set_threshold(policy.threshold0, policy.threshold1, policy.threshold2)
    return gc.get_freeze_count()
