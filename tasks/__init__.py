"""Broadcast's Celery tasks. Gateways need only `from tasks import broadcast`."""

from tasks.app import app
from tasks.deliver import deliver
from tasks.fan_out import broadcast, fan_out
from tasks.maintenance import (
    check_destination,
    flush_notifications_task,
    notify,
    revalidate_due_task,
    sweep_parked_task,
    trim_dead_letters_task,
)

__all__ = [
    "app",
    "broadcast",
    "check_destination",
    "deliver",
    "fan_out",
    "flush_notifications_task",
    "notify",
    "revalidate_due_task",
    "sweep_parked_task",
    "trim_dead_letters_task",
]
