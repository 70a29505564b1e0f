"""The baseline task: a bare Celery task that only counts itself (one Redis INCR)."""

from __future__ import annotations

import redis
from celery import Task

from settings.runtime import runtime
from tasks.app import broadcast_task

COUNTER_KEY = "bench:noop"


@broadcast_task(name="bench.noop")
def noop(self: Task) -> None:
    client: redis.Redis = runtime().store.redis
    client.incr(COUNTER_KEY)
