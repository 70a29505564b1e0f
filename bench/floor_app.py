"""The benchmark's floor: a bare Celery app whose one task only counts itself (one INCR).

Bare means Celery's and kombu's defaults (kombu's own Redis transport), except what the
issue says to match and what Broadcast's delivery guarantees need: the same pool and
concurrency (worker flags), the same event settings, acks late with prefetch 1.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

COUNTER_KEY = "bench:noop"
QUEUE = "bench.floor"

app = Celery("floor", broker=os.environ["BROADCAST_BROKER_URL"])
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_send_task_events=True,
    task_send_sent_event=False,
    task_track_started=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)
counter = redis.Redis.from_url(os.environ["BROADCAST_STORE_URL"])


@app.task(name="bench.noop")
def noop() -> None:
    counter.incr(COUNTER_KEY)
