"""What fan-out did with events, counted for the metrics without a Redis command per event.

Fan-out's Redis work per event is budgeted (≤ 25 commands for an event and its
deliveries, `make bench`, rows B3/D2), and most events of a busy gateway go to owners
with no destination at all, whose fan-out costs one small read. A counter per event would
add a command to each of them. So each worker process adds its events up in memory and
writes them to the store (`bc:events:counts`, one `HINCRBY` per outcome) at most once per
`FLUSH_SECONDS`, from a daemon thread, and once more when the process stops.

What this costs in truth: a process killed with `kill -9` loses at most the last second
of its counts (its fan-out messages are redelivered and counted again by the worker that
takes them). Rejected events are not counted here: their fan-out writes to the store
anyway, and counts them exactly in the same round trip (`SettingsStore.record_rejected_event`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from celery.signals import worker_process_shutdown, worker_shutdown

from broadcast_engine.runtime import runtime
from settings import keys
from settings.redis_commands import RedisClient
from settings.store import EVENT_OUTCOMES

logger = logging.getLogger("broadcast.fan_out")

FLUSH_SECONDS = 1.0


class EventTally:
    """Counts of `EVENT_OUTCOMES` held by this process until the next flush.

    Thread-safe. The flushing thread starts with the first count in each process (a
    prefork child starts its own: threads do not survive a fork)."""

    def __init__(
        self, client: Callable[[], RedisClient], *, flush_seconds: float = FLUSH_SECONDS
    ) -> None:
        self._client = client
        self._flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._flusher_pid: int | None = None

    def add(self, outcome: str) -> None:
        """Count one event's outcome (one of `EVENT_OUTCOMES`). Raises `ValueError` for
        another name, so a misspelt outcome fails in tests instead of vanishing."""
        if outcome not in EVENT_OUTCOMES:
            raise ValueError(f"unknown event outcome {outcome!r}")
        with self._lock:
            self._counts[outcome] += 1
            if self._flusher_pid != os.getpid():
                self._start_flusher()

    def flush(self) -> None:
        """Write what was counted since the last flush. On a store error the counts are
        kept for the next flush (logged, never raised: counting must not fail an event)."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not counts:
            return
        try:
            with self._client().pipeline(transaction=False) as pipe:
                for outcome, amount in counts.items():
                    pipe.hincrby(keys.EVENT_COUNTS, outcome, amount)
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            with self._lock:
                self._counts.update(counts)
            logger.warning("broadcast.fan_out.tally_not_written error=%s", type(exc).__name__)

    def _start_flusher(self) -> None:
        self._flusher_pid = os.getpid()
        thread = threading.Thread(target=self._run, name="broadcast-event-tally", daemon=True)
        thread.start()

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with the process
            time.sleep(self._flush_seconds)  # the flush period, not a wait for anything
            self.flush()


_tally: EventTally | None = None
_tally_lock = threading.Lock()


def tally() -> EventTally:
    """This process's tally, writing to the runtime's store."""
    global _tally
    with _tally_lock:
        if _tally is None:
            _tally = EventTally(lambda: runtime().store.redis)
        return _tally


@worker_process_shutdown.connect(weak=False)
@worker_shutdown.connect(weak=False)
def _flush_at_exit(**_: Any) -> None:
    """A stopping worker (a prefork child, or the main process of the threads pool)
    writes what it counted since the last flush."""
    if _tally is not None:
        _tally.flush()
