"""The process's shared objects, built once from the injected configuration.

Workers and the CLI call `runtime()`; nothing imports a module-level client at import
time, so a missing setting fails at start-up with a clear message, not mid-delivery.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

from celery import Celery

from broadcast_broker.task_client import DELIVER_TASK, TaskSender
from broadcast_engine.backlog import Backlog
from broadcast_engine.dead_letters import DeadLetters
from broadcast_engine.health import HealthKeeper
from broadcast_engine.lease_keeper import LeaseKeeper
from broadcast_engine.notifications import Notifications
from broadcast_engine.trace_store import TraceStore
from broadcast_engine.unreadable_messages import UnreadableMessages
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from settings.config import BroadcastConfig, load_config
from settings.crypto import SecretBox
from settings.redis_client import connect
from settings.store import SettingsStore

# How far past the retry horizon a stored trace outlives its entries (see `traces`).
TRACE_MARGIN_SECONDS = 3600.0


@dataclass
class Runtime:
    config: BroadcastConfig
    # The worker's own Celery app, when this process is a worker (`use_task_app`).
    task_app: Celery | None = field(default=None, repr=False)

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
    def leases(self) -> LeaseKeeper:
        return LeaseKeeper(self.backlog)

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
        return HealthKeeper(
            self.store,
            self.notifications,
            self.config,
            kick=self.kick,
            make_due=self.backlog.make_due,
        )

    @cached_property
    def tasks(self) -> TaskSender:
        """How this process sends Broadcast's tasks (the one way: `TaskSender`)."""
        return TaskSender(self.config.broker_url, self.task_app)

    def kick(self, destination_id: str, *, force: bool = False) -> None:
        """Make sure a deliver task will read the destination's backlog: send one unless
        one is queued or running (`force`: send one regardless, e.g. after a recovery)."""
        if self.backlog.mark_queued(destination_id, force=force):
            self.tasks.send(DELIVER_TASK, (destination_id,))


_lock = threading.Lock()
_runtime: Runtime | None = None
_task_app: Celery | None = None


def runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(load_config(), task_app=_task_app)
        return _runtime


def use_task_app(app: Celery) -> None:
    """Send this process's tasks through `app` (a worker's own Celery app), not a second
    client: called at worker start, before the runtime is first used."""
    global _task_app
    with _lock:
        _task_app = app
        if _runtime is not None:  # built already (logging setup reads the config)
            _runtime.task_app = app
            _runtime.__dict__.pop("tasks", None)
