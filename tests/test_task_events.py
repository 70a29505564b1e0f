"""A worker's task events, batched (broadcast_engine/task_event_batching.py): every event
the session worker sends reaches a subscriber, in fewer broker messages than events."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from harness.samples import chat_event
from harness.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def task_event_messages(worker) -> Iterator[Any]:
    """A subscription to the workers' task events (kombu publishes them on the broker's
    pub/sub channels named after the event's routing key)."""
    client = redis.Redis.from_url(os.environ["BROADCAST_BROKER_URL"])
    subscription = client.pubsub(ignore_subscribe_messages=True)
    subscription.psubscribe("*celeryev/task.*")
    wait_for(lambda: client.pubsub_numpat() > 0, timeout=10, what="the subscription")
    yield subscription
    subscription.close()
    client.close()


def events_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    envelope = json.loads(message["data"])
    body = json.loads(base64.b64decode(envelope["body"]))
    return body if isinstance(body, list) else [body]


def test_task_events_are_published_in_batches_and_none_is_lost(
    task_event_messages, service, user_id, receiver
):
    from tasks import broadcast

    sink = receiver()
    service.add_destination(f"user:{user_id}", "webhook", "events", {"url": sink.url})
    sent = [broadcast.delay(chat_event(i, user_id=user_id)).id for i in range(40)]
    messages: list[dict[str, Any]] = []
    seen: dict[str, set[str]] = {task_id: set() for task_id in sent}

    def every_fan_out_seen_to_the_end() -> bool:
        while (message := task_event_messages.get_message(timeout=0.05)) is not None:
            messages.append(message)
            for event in events_of(message):
                if event.get("uuid") in seen:
                    seen[event["uuid"]].add(event["type"])
        return all("task-succeeded" in types for types in seen.values())

    wait_for(every_fan_out_seen_to_the_end, timeout=60, what="every fan-out's task events")
    events = sum(len(events_of(message)) for message in messages)
    for task_id, types in seen.items():
        assert {"task-received", "task-started", "task-succeeded"} <= types, task_id
    # Celery alone publishes on the next loop turn: 2.7 events per message measured here.
    assert len(messages) * 6 <= events, (len(messages), events)
