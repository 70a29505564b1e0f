"""Every Celery setting in one place: broker, queues, routes, reliability, beat schedule.

Broker and store URLs come from the environment (`settings.config.load_config`), with a
local Redis as the default.
"""

from kombu import Exchange, Queue

from broadcast_broker.amqp_topology import amqp_task_queues
from broadcast_broker.bounded_compression import register_bounded_decompression
from broadcast_broker.message_codec import message_bytes_limit, register_codec
from broadcast_broker.topology import (
    DELIVER_QUEUE,
    FANOUT_QUEUE,
    MAINTENANCE_QUEUE,
    STREAM_TRANSPORT,
    TASK_QUEUES,
    transport_for,
)
from settings.config import load_config
from settings.event_limits import EventLimits

_config = load_config()

broker_url = _config.broker_url
# On Redis, Broadcast's own transport: each task queue is a Redis stream read through a
# consumer group, so no message is lost between a pop and its unacked record, and each is
# stored once (broadcast_broker/stream_transport.py). Other URLs use kombu's transport.
broker_transport = transport_for(broker_url)
# Fire-and-forget: outcomes live in the settings store's delivery log, not a result backend.
result_backend = None
task_ignore_result = True

# kombu's "json" serializer replaced by one that enforces the event limits where a message
# is decoded: a prefork worker's main process pickles decoded arguments for its child, and
# a deeply nested one would kill it before any task runs (broadcast_broker/message_codec.py).
_limits = EventLimits.from_config(_config)
register_codec(_limits)
# kombu inflates a compressed body (its `compression` header) before anything can check
# its size: here it stops past the largest message an event within the limits makes
# (broadcast_broker/bounded_compression.py), and the worker sets the message aside.
register_bounded_decompression(message_bytes_limit(_limits))
# The worker's consumer vets every task message before Celery's strategy reads it, and
# sets aside (records, then drops) what it cannot take: one malformed message must not
# stop a worker (broadcast_engine/vetting_consumer.py). Both brokers.
worker_consumer = "broadcast_engine.vetting_consumer:VettingConsumer"
task_serializer = "json"
# A fan-out message carries the whole event: zlib makes it (and its copy in the unacked
# hash) about a third smaller. Workers read compressed and plain messages alike, so a
# gateway's own Celery client need not compress.
task_compression = "zlib"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Each queue has its own direct exchange and routing key, so a message lands in one queue.
task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in TASK_QUEUES
)
task_default_queue = FANOUT_QUEUE
task_default_exchange = FANOUT_QUEUE
task_default_routing_key = FANOUT_QUEUE
# On the stream transport a sender declares nothing (Celery would check its declaration
# cache on every `.delay()`): XADD creates the stream, and the workers' consumer group
# reads it from its first entry, whenever the group is created.
_declare: dict[str, list[Queue]] = {"declare": []} if broker_transport == STREAM_TRANSPORT else {}
task_routes = {
    "broadcast.fan_out": {"queue": FANOUT_QUEUE, **_declare},
    "broadcast.deliver": {"queue": DELIVER_QUEUE, **_declare},
    "broadcast.maintenance.*": {"queue": MAINTENANCE_QUEUE, **_declare},
}
# The worker loads these; a gateway that only sends `broadcast.fan_out` never does.
imports = ("tasks.deliver", "tasks.maintenance")

# Reliability: a task is acknowledged only once it finished, and a task whose worker died
# goes back to the queue. Redeliveries are harmless because every vendor-side id is
# deterministic.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# With Redis, an unacknowledged message (a running task, or a retry waiting for its
# countdown) is redelivered after the visibility timeout: it must exceed the longest task
# (the hard time limit) plus the longest short-tier countdown (BROADCAST_RETRY_CAP_SECONDS,
# 120 s). Longer waits never sit in the broker: backlogs wait in Redis and beat's sweep
# kicks them. A killed worker's message comes back after this; its backlog entries come
# back sooner, after BROADCAST_CLAIM_LEASE_SECONDS, through the sweep.
VISIBILITY_TIMEOUT_SECONDS = _config.visibility_timeout_seconds  # 300 s by default
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
    # The stream transport inflates its own envelope within this (stream_transport.py).
    "max_message_bytes": message_bytes_limit(_limits),
}
task_soft_time_limit = 120
task_time_limit = 150
broker_connection_retry_on_startup = True

# Task events so Flower sees every task the workers receive, start and finish. The
# task-sent event costs the gateway a second broker write per `.delay()`: off unless
# BROADCAST_SEND_SENT_EVENTS=1.
worker_send_task_events = True
task_send_sent_event = _config.send_sent_events
task_track_started = True

# Beat (exactly one runs). Every job is cheap and idempotent; the long intervals live in
# Redis, per destination, not here:
# - the sweep looks after every backlog (broadcast_engine/backlog_upkeep.py): kicks the ones
#   with due work and no task (after a backoff, at a circuit's probe time, after a lost task),
#   retains lagging traces, dead-letters what passed the horizon, enforces the bounds;
# - credentials are re-validated every BROADCAST_REVALIDATE_SECONDS (6 h, spread +-10 %
#   per destination), and every BROADCAST_AUTH_FAILED_RECHECK_SECONDS (15 min) while rejected.
# A second beat on the same store stands by instead of doubling every job: beat sends
# only while it holds a lock in Redis (broadcast_engine/beat_guard.py).
beat_scheduler = "broadcast_engine.beat_guard:GuardedScheduler"
beat_schedule = {
    "sweep-backlogs": {
        "task": "broadcast.maintenance.sweep",
        "schedule": _config.sweep_interval_seconds,
    },
    "flush-owner-notifications": {
        "task": "broadcast.maintenance.flush_notifications",
        "schedule": 10.0,
    },
    "revalidate-due-credentials": {
        "task": "broadcast.maintenance.revalidate_due",
        "schedule": 60.0,
    },
    "trim-dead-letters": {
        "task": "broadcast.maintenance.trim_dead_letters",
        "schedule": 3600.0,
    },
}


# --- RabbitMQ: only when the broker URL is amqp:// (docs/production.md, "Choosing the broker")
# Quorum queues (replicated, durable; RabbitMQ's recommended type). Countdowns on quorum
# queues go through Celery's native delayed delivery, which routes through topic exchanges:
# with a direct exchange Celery only warns and the worker would hold the message unacked.
# Celery turns global QoS off by itself for quorum queues (worker_detect_quorum_queues).
# The gateway-facing `broadcast.fanout` is bound to a direct exchange, as a stock client
# declares it, and a stock client's declaration of the queue is equivalent in a vhost
# whose default queue type is quorum (broadcast_broker/amqp_topology.py, docs/gateway.md).
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
if broker_url.startswith(AMQP_SCHEMES):
    task_queues = amqp_task_queues()
    task_default_exchange_type = "topic"
    task_default_queue_type = "quorum"
