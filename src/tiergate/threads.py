"""OS scheduling priority for the threads that run background model calls.

A shadow call to the last tier (2 % of the traffic, at most a few per second) is the same
~13 ms of CPU as an escalated request, but nobody waits for it. On a small machine it
takes a core from the event loop for that long, and its bursts are where a fast path's
p99 lands. A thread that runs only such calls is lowered to the weakest CPU share
(``nice`` 19, Linux per thread): it still runs whenever a core is free.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

BACKGROUND_NICE = 19


def lower_this_thread(nice: int = BACKGROUND_NICE) -> bool:
    """Give the calling thread the CPU share of ``nice``; True if it took effect.

    Linux applies ``setpriority`` to one thread when given its native id; elsewhere
    (where it would lower the whole process) this does nothing. Raising ``nice`` never
    needs a privilege.
    """
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:  # a sandbox may forbid it: the call still runs, at full share
        log.warning("cannot lower background thread priority: %s", exc)
        return False
    return True


def thread_nice(native_id: int | None = None) -> int:
    """The ``nice`` value of a thread (the calling one by default)."""
    return os.getpriority(os.PRIO_PROCESS, native_id or threading.get_native_id())
