"""Every Celery setting in one place: broker, queues, routes, reliability, beat schedule.

Broker and store URLs come from the environment (`settings.config.load_config`), with a
local Redis as the default.
"""

from kombu import Exchange, Queue

from settings.config import load_config

_config = load_config()

broker_url = _config.broker_url
# Fire-and-forget: outcomes live in the settings store's delivery log, not a result backend.
result_backend = None
task_ignore_result = True

task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

FANOUT_QUEUE = "broadcast.fanout"
DELIVER_QUEUE = "broadcast.deliver"
MAINTENANCE_QUEUE = "broadcast.maintenance"
# Each queue has its own direct exchange and routing key, so a message lands in one queue.
task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in (FANOUT_QUEUE, DELIVER_QUEUE, MAINTENANCE_QUEUE)
)
task_default_queue = FANOUT_QUEUE
task_default_exchange = FANOUT_QUEUE
task_default_routing_key = FANOUT_QUEUE
task_routes = {
    "broadcast.fan_out": {"queue": FANOUT_QUEUE},
    "broadcast.deliver": {"queue": DELIVER_QUEUE},
    "broadcast.maintenance.*": {"queue": MAINTENANCE_QUEUE},
}

# Reliability: a task is acknowledged only once it finished, and a task whose worker died
# goes back to the queue. Redeliveries are harmless because every vendor-side id is
# deterministic.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# With Redis, an unacknowledged message (including a retry waiting for its countdown) is
# redelivered after the visibility timeout. Every time limit and every short-retry
# countdown stays far below it; longer waits are parked in Redis (tasks.retry_policy).
VISIBILITY_TIMEOUT_SECONDS = 3600
broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
task_soft_time_limit = 60
task_time_limit = 90
broker_connection_retry_on_startup = True

# Task events so Flower sees every task from sending to finishing.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

# Beat (exactly one runs). Every job is cheap and idempotent; the long intervals live in
# Redis, per destination, not here:
# - parked deliveries come due on the long retry schedule (BROADCAST_PARK_SCHEDULE_SECONDS,
#   5 min, 30 min, 2 h, 5 h, 10 h, 10 h); the sweep re-queues them, bounded per destination;
# - credentials are re-validated every BROADCAST_REVALIDATE_SECONDS (6 h, spread +-10 %
#   per destination), and every BROADCAST_AUTH_FAILED_RECHECK_SECONDS (15 min) while rejected.
beat_schedule = {
    "sweep-parked-deliveries": {
        "task": "broadcast.maintenance.sweep_parked",
        "schedule": 10.0,
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
