"""Where a tier's model runs: its own thread, or inline on the event loop."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tiergate.config import load_config
from tiergate.models import CallableAdapter
from tiergate.models.base import Probabilities
from tiergate.service import Service
from tiergate.testing import keyword_sentiment
from tiergate.threads import BACKGROUND_NICE, thread_nice
from tiergate.tier import Tier

CONFIG = """
service: executor
tiers:
  - name: fast
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}}
    threshold: 0.9
    cost_per_call: 0.000001
    executor: {executor}
    {fault}
  - name: accurate
    model: {{kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}}
    cost_per_call: 0.0001
"""


def service(
    tmp_path: Path, executor: str, *, fault: str = "", measure: bool = True
) -> tuple[Service, list[int]]:
    threads: list[int] = []

    def model(texts: Sequence[str]) -> Probabilities:
        threads.append(threading.get_ident())
        return keyword_sentiment(texts)

    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(executor=executor, fault=fault))
    adapter = CallableAdapter(model, ("negative", "positive"))
    svc = Service.from_config(load_config(path), adapters={"fast": adapter}, measure_costs=measure)
    return svc, threads


@pytest.mark.parametrize(("executor", "inline"), [("inline", True), ("thread", False)])
def test_explicit_executor_decides_the_thread(tmp_path: Path, executor: str, inline: bool) -> None:
    svc, threads = service(tmp_path, executor)
    threads.clear()
    result = asyncio.run(svc.predict("a great, gorgeous film"))
    svc.close()
    assert result.tier == "fast"
    assert (threads[-1] == threading.get_ident()) is inline
    assert svc.describe()["tiers"][0]["executor"] == ("inline" if inline else "thread")


def test_auto_runs_a_cheap_model_inline(tmp_path: Path) -> None:
    svc, _ = service(tmp_path, "auto")
    assert svc.tiers[0].measured_call_s is not None and svc.tiers[0].measured_call_s < 0.001
    assert svc.tiers[0].inline
    svc.close()


def test_auto_keeps_the_thread_when_faults_are_injected(tmp_path: Path) -> None:
    svc, _ = service(tmp_path, "auto", fault="fault: {delay_ms: 0, error_rate: 0.0}")
    assert not svc.tiers[0].inline
    svc.close()


def test_auto_keeps_the_thread_without_a_measurement(tmp_path: Path) -> None:
    svc, _ = service(tmp_path, "auto", measure=False)
    assert not svc.tiers[0].inline
    svc.close()


def recording_tier(gate: threading.Event | None = None) -> tuple[Tier, list[tuple[int, int]]]:
    """A thread-executor tier whose model records (native thread id, its nice value)."""
    seen: list[tuple[int, int]] = []

    def model(texts: Sequence[str]) -> Probabilities:
        seen.append((threading.get_native_id(), thread_nice()))
        if gate is not None:
            gate.wait(10)
        return keyword_sentiment(texts)

    adapter = CallableAdapter(model, ("negative", "positive"))
    tier = Tier("accurate", adapter, threshold=None, cost_per_call=0.01, inline=False)
    return tier, seen


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_background_calls_run_apart_at_the_lowest_priority() -> None:
    tier, seen = recording_tier()

    async def run() -> tuple[Any, Any]:
        served = await tier.predict(["a great film"], None)
        shadow = await tier.predict_background(["a great film"], 10.0)
        await tier.predict_background(["an awful film"], 10.0)
        return served, shadow

    served, shadow = asyncio.run(run())
    tier.close()
    (served_tid, served_nice), (bg_tid, bg_nice), (bg_tid2, _) = seen
    assert served_tid != bg_tid and bg_tid == bg_tid2  # one background thread, reused
    assert served_nice == os.getpriority(os.PRIO_PROCESS, 0)
    assert bg_nice == max(BACKGROUND_NICE, served_nice)
    assert shadow.probs.tolist() == served.probs.tolist()  # the same answer, just later
    assert tier.latency._n == 1  # served traffic only


def test_background_call_gives_up_at_its_timeout() -> None:
    gate = threading.Event()
    tier, _ = recording_tier(gate)

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await tier.predict_background(["a great film"], 0.0)

    try:
        asyncio.run(run())
    finally:
        gate.set()
        tier.close()
