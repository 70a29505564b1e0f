"""Broadcast's Celery tasks. Gateways need only `from tasks import broadcast`.

Importing this package loads the Celery app and the light `broadcast.fan_out` declaration,
nothing else: no vendor module, no OTLP, no cryptography. The worker loads the rest
(`celeryconfig.imports`: the deliver task and beat's jobs).
"""

from tasks.app import app
from tasks.fan_out import broadcast, fan_out

__all__ = ["app", "broadcast", "fan_out"]
