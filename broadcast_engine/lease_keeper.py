"""Keeps the leases of runs whose vendor request is in flight.

A run's batch is reclaimed by another run once its lease (`BROADCAST_CLAIM_LEASE_SECONDS`)
runs out without a renewal: that is how a killed worker's batch comes back in seconds.
A slow vendor must not look like a dead run, so while a request is in flight one daemon
thread per process renews the lease every third of it (`Backlog.renew`). A request that
answers within a third of the lease, the usual case, costs no Redis command.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count

import redis

from broadcast_engine.backlog import Backlog, BacklogEntry

logger = logging.getLogger("broadcast.deliver")


@dataclass
class _Lease:
    destination_id: str
    token: str
    consumer: str
    entries: Sequence[BacklogEntry]
    renew_at: float


class LeaseKeeper:
    def __init__(self, backlog: Backlog) -> None:
        self.backlog = backlog
        self.every = backlog.lease_seconds / 3
        self._leases: dict[int, _Lease] = {}
        self._numbers = count()
        self._lock = threading.Lock()
        self._thread_pid: int | None = None

    @contextmanager
    def held(
        self, destination_id: str, token: str, consumer: str, entries: Sequence[BacklogEntry]
    ) -> Iterator[None]:
        """Renew the run's lease for as long as the block runs."""
        lease = _Lease(destination_id, token, consumer, entries, time.monotonic() + self.every)
        with self._lock:
            self._ensure_thread()
            number = next(self._numbers)
            self._leases[number] = lease
        try:
            yield
        finally:
            with self._lock:
                self._leases.pop(number, None)

    def _ensure_thread(self) -> None:
        # A forked worker child inherits the registry (its parent's leases) but not the
        # thread: it starts its own, with none of the parent's leases.
        if self._thread_pid == os.getpid():
            return
        self._leases = {}
        self._thread_pid = os.getpid()
        threading.Thread(target=self._renew_forever, name="broadcast-leases", daemon=True).start()

    def _renew_forever(self) -> None:
        while True:
            time.sleep(min(1.0, self.every))  # a timer's tick, not a wait for work
            now = time.monotonic()
            with self._lock:
                due = [lease for lease in self._leases.values() if lease.renew_at <= now]
            for lease in due:
                self._renew(lease, now)

    def _renew(self, lease: _Lease, now: float) -> None:
        try:
            held = self.backlog.renew(
                lease.destination_id, lease.token, lease.consumer, lease.entries, time.time()
            )
        except redis.RedisError as exc:  # the store is away: the next tick tries again
            logger.warning(
                "broadcast.deliver.lease_renewal_failed destination=%s error=%s",
                lease.destination_id,
                type(exc).__name__,
            )
            return
        lease.renew_at = now + self.every
        if held < len(lease.entries):
            logger.warning(
                "broadcast.deliver.lease_lost destination=%s held=%d of %d",
                lease.destination_id,
                held,
                len(lease.entries),
            )
