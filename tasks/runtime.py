"""The process's shared objects, built once from the injected configuration.

Workers and the CLI call `runtime()`; nothing imports a module-level client at import
time, so a missing setting fails at start-up with a clear message, not mid-delivery.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from settings.config import BroadcastConfig, load_config
from settings.crypto import SecretBox
from settings.dead_letters import DeadLetters
from settings.health import HealthKeeper
from settings.notifications import Notifications
from settings.parking import ParkingLot
from settings.service import SettingsService
from settings.store import SettingsStore


@dataclass
class Runtime:
    config: BroadcastConfig

    @cached_property
    def store(self) -> SettingsStore:
        return SettingsStore.from_url(
            self.config.store_url, delivery_log_size=self.config.delivery_log_size
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
    def parking(self) -> ParkingLot:
        return ParkingLot(self.store.redis)

    @cached_property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(
            self.store.redis, retention_seconds=self.config.dead_letter_retention_seconds
        )

    @cached_property
    def notifications(self) -> Notifications:
        return Notifications(self.store.redis, self.box)

    @cached_property
    def health(self) -> HealthKeeper:
        return HealthKeeper(
            self.store, self.parking, self.dead_letters, self.notifications, self.config
        )

    @cached_property
    def service(self) -> SettingsService:
        return SettingsService(
            self.store, self.box, self.transport, self.health, enqueue_delivery=_enqueue_delivery
        )


def _enqueue_delivery(destination_id: str, trace_wire: dict[str, Any], accepted_at: float) -> None:
    from tasks.deliver import deliver  # the tasks import this module: import at call time

    deliver.apply_async(args=(destination_id, trace_wire, accepted_at))


_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(load_config())
        return _runtime
