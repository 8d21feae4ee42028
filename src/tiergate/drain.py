"""Graceful drain: on SIGTERM, stop admitting, finish what is in flight, exit 0.

The Kubernetes sequence this serves: the pod is marked terminating, its ``preStop`` hook
sleeps a few seconds while endpoints drop it, then SIGTERM arrives. From then on:

1. ``/readyz`` answers 503 (``draining``) and new predict requests get 503 with
   ``Retry-After`` (typed ``draining``), so a load balancer or client retries elsewhere;
2. requests already admitted run to their answer, for at most ``drain_grace_s``;
3. then uvicorn closes the listener and idle connections and the process exits 0.

A second SIGTERM or SIGINT ends the drain at once (uvicorn's own shutdown).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from tiergate.service import Service

__all__ = ["DrainingServer"]

log = logging.getLogger("tiergate.drain")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT starts a drain instead of a stop."""

    def __init__(
        self,
        config: uvicorn.Config,
        service: Service,
        *,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config)
        self.service = service
        self.grace_s = grace_s
        self._clock = clock
        self._drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started is not None or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        # A signal handler: set flags only; on_tick (every 0.1 s) does the rest.
        self._drain_started = self._clock()
        self.service.draining = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_started is not None and not self.should_exit:
            inflight = self.service.admission.inflight
            waited = self._clock() - self._drain_started
            if counter % 10 == 0 or inflight == 0:
                log.warning("draining: %d inputs in flight, %.1f s of %.1f s grace",
                            inflight, waited, self.grace_s)  # fmt: skip
            if inflight == 0 or waited >= self.grace_s:
                # What is still running when the grace ends is cut at uvicorn's timeout.
                self.config.timeout_graceful_shutdown = max(1, math.ceil(self.grace_s - waited))
                self.should_exit = True
        return await super().on_tick(counter)
