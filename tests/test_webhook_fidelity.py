"""Webhook: a stable de-duplication id without a signing secret, and a body size cap that
ends in a clear permanent error."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

import pytest

from broadcast_engine.events import build_trace
from destinations.base import DeliveryContext, PayloadTooLarge
from destinations.outcomes import Outcome
from destinations.trace import Message
from destinations.transport import HttpTransport
from destinations.webhook import WebhookConfig, WebhookDestination
from harness.receiver import Receiver, Reply, always
from harness.samples import BASE_TIME, chat_event

CONTEXT = DeliveryContext("dst_hook", "user:u", BASE_TIME + timedelta(hours=1))
TRACE = build_trace(chat_event(1))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(always(Reply(200, b"ok"))) as server:
        yield server


def hook(url: str, transport: HttpTransport, **extra: object) -> WebhookDestination:
    return WebhookDestination(WebhookConfig().load({"url": url, **extra}), transport)


def test_unsigned_deliveries_carry_a_stable_webhook_id(
    receiver: Receiver, transport: HttpTransport
) -> None:
    destination = hook(receiver.url, transport)
    for _ in range(2):
        assert destination.deliver(TRACE, CONTEXT).outcome is Outcome.DELIVERED
    first, second = receiver.requests()
    assert first.headers["webhook-id"].startswith("msg_")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert "webhook-signature" not in first.headers
    other = build_trace(chat_event(2))
    assert (
        destination.build_request(other, CONTEXT).headers["webhook-id"]
        != (first.headers["webhook-id"])
    )


def test_large_content_is_truncated_to_the_cap(transport: HttpTransport) -> None:
    big = dataclasses.replace(TRACE, input_messages=(Message("user", "x" * 200_000),))
    destination = hook("https://hooks.example.com/in", transport, max_body_bytes=64 * 1024)
    request = destination.build_request(big, CONTEXT)
    assert len(request.body) <= 64 * 1024 and b"truncated" in request.body


def test_a_body_that_cannot_fit_is_a_clear_permanent_error(
    receiver: Receiver, transport: HttpTransport
) -> None:
    many = tuple(Message("user", "y" * 300) for _ in range(2_000))
    big = dataclasses.replace(TRACE, input_messages=many)
    destination = hook(receiver.url, transport, max_body_bytes=16 * 1024)
    with pytest.raises(PayloadTooLarge, match="limit 16384 bytes"):
        destination.build_request(big, CONTEXT)
    result = destination.deliver(big, CONTEXT)
    assert result.outcome is Outcome.PERMANENT and "payload too large" in (result.error or "")
    assert receiver.requests() == []
