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


def test_watch_times_each_collection_on_the_injected_clock() -> None:
    ticks = iter([10.0, 10.004, 20.0, 20.0005])
    seen: list[tuple[int, float]] = []
    watch = GcWatch(lambda gen, s: seen.append((gen, s)), clock=lambda: next(ticks))
    watch("start", {"generation": 2})
    watch("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    watch("start", {"generation": 0})
    watch("stop", {"generation": 0, "collected": 3, "uncollectable": 0})
    assert seen == [(2, pytest.approx(0.004)), (0, pytest.approx(0.0005))]
    assert watch.collections == 2 and watch.longest_s == pytest.approx(0.004)


def test_installed_watch_sees_a_real_collection_and_uninstalls() -> None:
    seen: list[int] = []
    watch = GcWatch(lambda gen, s: seen.append(gen)).install()
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


def test_prepare_for_serving_freezes_the_heap_and_sets_thresholds(restore_gc: None) -> None:
    keep = [[i] for i in range(1000)]  # tracked objects alive at "start-up"
    frozen = prepare_for_serving(GcPolicy(threshold0=12_345, threshold1=7, threshold2=9))
    assert frozen >= len(keep)
    assert gc.get_threshold() == (12_345, 7, 9)
    assert gc.get_freeze_count() > 0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        GcPolicy(threshold0=0)
