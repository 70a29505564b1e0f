"""What `status` and `destination list` say must be true during an incident (issue 21,
item 5): one destination whose secrets no key opens is named as such while the others
stay readable; a destination whose vendor answers but dead-letters every trace is
`failing` with the reason; a rejected event's reason names every field."""

from __future__ import annotations

import dataclasses

from broadcast_engine.runtime import runtime
from broadcast_interfaces.service import SECRETS_UNREADABLE, settings_service
from harness.receiver import Reply
from harness.samples import chat_event
from harness.waiting import wait_for
from settings.crypto import SecretBox, generate_key
from tasks import broadcast


def test_one_unreadable_secret_is_named_and_the_rest_stay_readable(service, user_id, receiver):
    owner = f"user:{user_id}"
    sink = receiver()
    readable = service.add_destination(owner, "webhook", "ok", {"url": sink.url})["id"]
    sealed_elsewhere = service.add_destination(
        owner, "webhook", "lost key", {"url": sink.url, "signing_secret": "whsec_" + "Q" * 32}
    )["id"]
    record = service.store.get_destination(sealed_elsewhere)
    # Its secrets sealed with a key this installation no longer has.
    foreign = SecretBox([generate_key()]).seal({"signing_secret": "whsec_" + "Q" * 32})
    service.store.replace_destination(dataclasses.replace(record, sealed_secrets=foreign))

    listed = {view["id"]: view for view in service.list_destinations(owner)}
    assert listed[readable]["health"] == "healthy"
    assert listed[sealed_elsewhere]["health"] == SECRETS_UNREADABLE
    assert listed[sealed_elsewhere]["config"]["signing_secret"].startswith("(unreadable")
    rows = {row["id"]: row for row in service.status(owner)}
    assert rows[readable]["health"] == "healthy"
    assert rows[sealed_elsewhere]["health"] == SECRETS_UNREADABLE
    assert "no configured key" in rows[sealed_elsewhere]["health_reason"]


def test_a_vendor_that_refuses_every_trace_makes_the_destination_failing(
    worker, service, user_id, receiver
):
    owner = f"user:{user_id}"
    refusing = {"on": False}

    def vendor(request):
        if refusing["on"] and not request.headers.get("x-test-connection"):
            return Reply(400, b"schema mismatch: field 'x'")
        return Reply(200)

    destination_id = service.add_destination(owner, "webhook", "w", {"url": receiver(vendor).url})[
        "id"
    ]
    refusing["on"] = True
    for index in range(3):
        broadcast.delay(chat_event(index, user_id=user_id, id=f"{user_id}-{index}"))
    wait_for(lambda: service.store.counters(destination_id)["failed"] == 3)
    [row] = service.status(owner)
    assert row["health"] == "failing"
    assert "dead-lettered" in row["health_reason"] and "400" in row["health_reason"]


def test_a_rejected_events_reason_names_every_field(worker, user_id):
    event = chat_event(1, user_id=user_id, id=f"{user_id}-broken")
    event["model"] = ""
    event["provider"] = 7
    event["usage"] = {"prompt_tokens": -1, "completion_tokens": "x"}
    event["status"] = "maybe"
    broadcast.delay(event)
    service = settings_service(runtime())

    def rejected():
        listed = service.rejected_events(f"user:{user_id}")
        return listed[0] if listed else None

    entry = wait_for(rejected, what="the rejection")
    for field in ("model", "provider", "usage.prompt_tokens", "usage.completion_tokens", "status"):
        assert field in entry["reason"], (field, entry["reason"])
    assert "more)" not in entry["reason"]
