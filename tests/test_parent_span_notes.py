"""A caller's `parent_span_id` a vendor cannot use as a parent is noted in the delivery
log, never a reason to refuse the event (OTLP family and Datadog)."""

from __future__ import annotations

import pytest

from harness.samples import chat_event
from harness.waiting import wait_for
from tasks import broadcast

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("parent", "noted"),
    [("9f6c2f5a-5a53-4d3e-9a3e-1f2b3c4d5e6f", True), ("00f067aa0ba902b7", False)],
)
def test_an_unusable_parent_span_id_is_noted_and_delivered(
    worker, service, user_id, receiver, parent, noted
):
    sink = receiver()
    owner = f"user:{user_id}"
    destination_id = service.add_destination(
        owner, "otel-collector", "otlp", {"endpoint": f"{sink.url}/v1/traces"}
    )["id"]
    broadcast.delay(
        chat_event(1, user_id=user_id, id=f"{user_id}-1", trace={"parent_span_id": parent})
    )
    wait_for(lambda: service.store.counters(destination_id)["delivered"] == 1)
    [entry] = service.deliveries(destination_id)
    assert entry["outcome"] == "delivered"
    assert bool(entry["notes"]) is noted
    if noted:
        assert "parent_span_id" in entry["notes"][0]
