"""Broadcast's Celery tasks. Gateways need only `from tasks import broadcast`."""

from tasks.app import app
from tasks.deliver import deliver
from tasks.fan_out import broadcast, fan_out

__all__ = ["app", "broadcast", "deliver", "fan_out"]
