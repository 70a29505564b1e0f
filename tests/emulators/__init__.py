"""Vendor emulators: real HTTP servers on loopback (`harness.receiver.Receiver`) that
check auth, validate bodies with the vendor's own models or schemas, and answer as the
vendor documents."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from harness.receiver import ReceivedRequest, Receiver, Reply
from harness.samples import chat_event


class Emulator(ABC):
    """What every emulator shares: a `Receiver` answering with `_respond`, `url`, and
    `with Emulator() as vendor:` serving until the block ends."""

    def __init__(self) -> None:
        self.receiver = Receiver(self._respond)

    @property
    def url(self) -> str:
        return self.receiver.url

    def __enter__(self) -> Self:
        self.receiver.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.stop()

    @abstractmethod
    def _respond(self, request: ReceivedRequest) -> Reply:
        """The vendor's answer to one request (called on the server's threads)."""


def json_reply(status: int, payload: Any) -> Reply:
    """A reply with `payload` as a JSON body, as the vendors' APIs answer."""
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def recent_event(user_id: str, index: int, vendor: str, **overrides: Any) -> dict[str, Any]:
    """A chat event that finished a moment ago, for end-to-end tests through the worker.

    Stamped with the real clock because the worker is (Datadog refuses spans older than
    24 hours); the id names the vendor so tests sharing a user do not collide.
    """
    started = datetime.now(UTC) - timedelta(seconds=2)
    return chat_event(
        index,
        user_id=user_id,
        id=f"{user_id}-{vendor}-{index}",
        started_at=started.isoformat(),
        finished_at=(started + timedelta(milliseconds=850)).isoformat(),
        **overrides,
    )
