"""The bounded-queue put that every pipeline thread uses to hand work on.

A plain blocking ``put`` on a full queue would wait forever once its consumer has stopped (a
failed writer, a run being cancelled), hanging the producer and the run with it. Waiting in
short slices and asking ``stopped`` between them bounds that wait to one slice.
"""

from __future__ import annotations

import queue
from typing import Callable

POLL_S = 0.1  # how long one wait lasts: the longest delay before a stop is noticed


def put_unless_stopped(target: queue.Queue, item, stopped: Callable[[], bool]) -> bool:
    """Put ``item`` into ``target``; True once it went in, False (the item dropped) when ``stopped()``,
    asked before every wait, came first."""
    while not stopped():
        try:
            target.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False
