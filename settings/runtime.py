"""The process's shared objects, built once from the injected configuration.

Workers and the CLI call `runtime()`; nothing imports a module-level client at import
time, so a missing setting fails at start-up with a clear message, not mid-delivery.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

from celery import Celery

from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from settings.backlog import Backlog
from settings.broker import use_broker
from settings.config import BroadcastConfig, load_config
from settings.crypto import SecretBox
from settings.dead_letters import DeadLetters
from settings.health import HealthKeeper
from settings.notifications import Notifications
from settings.redis_client import connect
from settings.service import SettingsService
from settings.store import SettingsStore
from settings.trace_store import TraceStore
from settings.unreadable_messages import UnreadableMessages

DELIVER_TASK = "broadcast.deliver"
# How far past the retry horizon a stored trace outlives its entries (see `traces`).
TRACE_MARGIN_SECONDS = 3600.0


@dataclass
class Runtime:
    config: BroadcastConfig

    @cached_property
    def store(self) -> SettingsStore:
        return SettingsStore(
            connect(self.config.store_url), delivery_log_size=self.config.delivery_log_size
        )

    @cached_property
    def box(self) -> SecretBox:
        return SecretBox(self.config.encryption_keys)

    @cached_property
    def transport(self) -> HttpTransport:
        return HttpTransport(
            NetworkPolicy(allow_private_networks=self.config.allow_private_networks),
            connect_timeout=self.config.connect_timeout,
            read_timeout=self.config.read_timeout,
        )

    @cached_property
    def traces(self) -> TraceStore:
        return TraceStore(
            self.store.redis,
            # A little past the horizon: the entry dead-lettered at the horizon still finds
            # its trace to keep a copy with its letter.
            lifetime_seconds=self.config.retry_horizon_seconds + TRACE_MARGIN_SECONDS,
            keep_after_seconds=self.config.trace_keep_after_seconds,
        )

    @cached_property
    def backlog(self) -> Backlog:
        return Backlog(
            self.store.redis,
            max_in_flight=self.config.max_in_flight,
            lease_seconds=self.config.claim_lease_seconds,
            log_size=self.config.delivery_log_size,
        )

    @cached_property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(
            self.store.redis, retention_seconds=self.config.dead_letter_retention_seconds
        )

    @cached_property
    def unreadable(self) -> UnreadableMessages:
        return UnreadableMessages(self.store.redis)

    @cached_property
    def notifications(self) -> Notifications:
        return Notifications(self.store.redis, self.box)

    @cached_property
    def health(self) -> HealthKeeper:
        return HealthKeeper(self.store, self.notifications, self.config, kick=self.kick)

    @cached_property
    def service(self) -> SettingsService:
        return SettingsService(
            self.store,
            self.box,
            self.transport,
            self.health,
            backlog=self.backlog,
            traces=self.traces,
            dead_letters=self.dead_letters,
            kick=self.kick,
        )

    @cached_property
    def task_client(self) -> Celery:
        """A Celery client configured like the workers, on this runtime's broker, for
        sending tasks by name: the settings layer never imports `tasks`."""
        client = Celery("broadcast", set_as_current=False)
        client.config_from_object("celeryconfig")
        use_broker(client.conf, self.config.broker_url)
        return client

    def kick(self, destination_id: str, *, force: bool = False) -> None:
        """Make sure a deliver task will read the destination's backlog: send one unless
        one is queued or running (`force`: send one regardless, e.g. after a recovery)."""
        if self.backlog.mark_queued(destination_id, force=force):
            self.task_client.send_task(DELIVER_TASK, args=(destination_id,))


_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(load_config())
        return _runtime
