"""Broker messages no worker could read, set aside where an operator can find them.

The worker's consumer (broadcast_engine/vetting_consumer.py) acknowledges such a message, so it
never comes back to stop the next worker, and records it here first: one capped stream
per queue in the settings store (`bc:unreadable:QUEUE`), each entry holding the time,
the reason, the size and SHA-256 of the raw bytes and what could be read of the task (its
name and id, control characters escaped), and a counter per queue
(`bc:unreadable:counts`) that the metrics export. `broadcast unreadable` lists them.

The raw bytes themselves are not kept: a message that cannot be read cannot be replayed,
and the hash lets a sender find which of its messages it was.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from broadcast_broker.topology import TASK_QUEUES
from settings import keys
from settings.printable import escape_controls
from settings.redis_commands import RedisClient

# Entries kept per queue (trimmed exactly: setting a message aside is rare, and a cap that
# holds is what keeps one queue's flood from growing without bound).
MAX_ENTRIES_PER_QUEUE = 10_000
# Messages from a queue that is not one of Broadcast's are counted under this name, so a
# sender cannot create keys by naming queues.
OTHER_QUEUE = "other"
_MAX_TEXT = {"reason": 500, "task": 256, "task_id": 256, "content_type": 100}


@dataclass(frozen=True)
class UnreadableMessage:
    """One message set aside: `size` and `sha256` are of its bytes as received. `queue`
    is None when the message does not say which queue it came from."""

    queue: str | None
    reason: str
    size: int
    sha256: str
    task: str | None = None
    task_id: str | None = None
    content_type: str | None = None


class UnreadableMessages:
    def __init__(
        self,
        client: RedisClient,
        *,
        queues: Sequence[str] = TASK_QUEUES,
        max_entries: int = MAX_ENTRIES_PER_QUEUE,
    ) -> None:
        self.redis = client
        self.queues = tuple(queues)
        self.max_entries = max_entries

    @staticmethod
    def listed_queues(queues: Sequence[str] = TASK_QUEUES) -> tuple[str, ...]:
        """The names entries are kept under: Broadcast's queues, and `OTHER_QUEUE`."""
        return (*queues, OTHER_QUEUE)

    def queue_name(self, queue: str | None) -> str:
        """`queue` if it is one of Broadcast's queues, else `OTHER_QUEUE`."""
        return queue if queue in self.queues else OTHER_QUEUE

    def record(self, message: UnreadableMessage, now: float) -> None:
        """Keep `message` in its queue's stream and count it. Raises `redis.RedisError`
        when the store cannot be reached (the caller logs the message instead)."""
        queue = self.queue_name(message.queue)
        entry = {**asdict(message), "queue": queue, "at": now}
        for name, limit in _MAX_TEXT.items():
            value = entry[name]
            if isinstance(value, str):
                entry[name] = escape_controls(value[:limit])
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(
                keys.unreadable(queue),
                {"message": json.dumps(entry, sort_keys=True)},
                maxlen=self.max_entries,
                approximate=False,
            )
            pipe.hincrby(keys.UNREADABLE_COUNTS, queue, 1)
            pipe.execute()

    def latest(self, queue: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest entries first, of `queue` or of every queue."""
        queues = [self.queue_name(queue)] if queue else self.listed_queues(self.queues)
        entries: list[dict[str, Any]] = []  # JSON documents
        for name in queues:
            for _id, fields in self.redis.xrevrange(keys.unreadable(name), count=limit):
                entries.append(json.loads(fields[b"message"]))
        entries.sort(key=lambda entry: float(entry["at"]), reverse=True)
        return entries[:limit]

    def counts(self) -> dict[str, int]:
        """Messages set aside per queue, ever (every queue present, 0 when none)."""
        raw = self.redis.hgetall(keys.UNREADABLE_COUNTS)
        counted = {name.decode(): int(value) for name, value in raw.items()}
        return {name: counted.get(name, 0) for name in self.listed_queues(self.queues)}
