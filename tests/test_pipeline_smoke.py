from __future__ import annotations

import json

from harness.samples import chat_event
from harness.waiting import wait_for
from tasks import broadcast


def test_event_reaches_webhook(worker, service, user_id, receiver):
    sink = receiver()
    dest = service.add_destination(f"user:{user_id}", "webhook", "hook", {"url": sink.url + "/in"})
    sink.clear()  # the Test Connection request
    broadcast.delay(chat_event(1, user_id=user_id, id=f"{user_id}-1"))
    got = wait_for(lambda: sink.requests("/in"), timeout=20)
    body = json.loads(got[0].body)
    assert body["data"]["requestId"] == f"{user_id}-1"
    wait_for(lambda: service.store.counters(dest["id"])["delivered"] == 1, timeout=10)
