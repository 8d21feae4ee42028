"""tiergate.heap: the collector's pauses are timed and reported; the heap can be frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tiergate.heap import GcPolicy, GcWatch, prepare_for_serving
from tiergate.metrics import Metrics


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_watch_times_each_collection_on_wall_and_cpu_clocks() -> None:
    ticks = iter([10.0, 10.004, 20.0, 20.0005])
    cpu = iter([1.0, 1.001, 2.0, 2.0004])  # the first pause was mostly preemption
    seen: list[tuple[int, float, float]] = []
    watch = GcWatch(
        lambda gen, s, c: seen.append((gen, s, c)),
        clock=lambda: next(ticks),
        cpu_clock=lambda: next(cpu),
    )
    watch("start", {"generation": 2})
    watch("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    watch("start", {"generation": 0})
    watch("stop", {"generation": 0, "collected": 3, "uncollectable": 0})
    assert seen == [
        (2, pytest.approx(0.004), pytest.approx(0.001)),
        (0, pytest.approx(0.0005), pytest.approx(0.0004)),
    ]
    assert watch.collections == 2 and watch.longest_s == pytest.approx(0.004)
    assert watch.longest_cpu_s == pytest.approx(0.001)


def test_installed_watch_sees_a_real_collection_and_uninstalls() -> None:
    seen: list[int] = []
    watch = GcWatch(lambda gen, s, c: seen.append(gen)).install()
    try:
        assert watch in gc.callbacks
        gc.collect()
        assert 2 in seen
    finally:
        watch.uninstall()
    assert watch not in gc.callbacks
    n = len(seen)
    gc.collect()
    assert len(seen) == n


def test_pauses_reach_the_exported_histogram() -> None:
    m = Metrics("svc", ["fast"])
    watch = GcWatch(m.observe_gc_pause).install()
    try:
        gc.collect()
    finally:
        watch.uninstall()
    count = m.registry.get_sample_value("tiergate_gc_pause_seconds_count", {"generation": "2"})
    assert count is not None and count >= 1
    cpu_count = m.registry.get_sample_value("tiergate_gc_cpu_seconds_count", {"generation": "2"})
    assert cpu_count == count
    wall = m.registry.get_sample_value("tiergate_gc_pause_seconds_sum", {"generation": "2"})
    cpu = m.registry.get_sample_value("tiergate_gc_cpu_seconds_sum", {"generation": "2"})
    assert wall is not None and cpu is not None and 0 < cpu <= wall * 1.05 + 1e-4


def test_prepare_for_serving_freezes_the_heap_and_sets_thresholds(restore_gc: None) -> None:
    keep = [[i] for i in range(1000)]  # tracked objects alive at "start-up"
    frozen = prepare_for_serving(GcPolicy(threshold0=12_345, threshold1=7, threshold2=9))
    assert frozen >= len(keep)
    assert gc.get_threshold() == (12_345, 7, 9)
    assert gc.get_freeze_count() > 0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        GcPolicy(threshold0=0)
