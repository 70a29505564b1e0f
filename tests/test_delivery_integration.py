"""End to end through `broadcast.delay`, a real worker and real receivers."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from standardwebhooks.webhooks import Webhook

from harness.receiver import Reply
from harness.samples import chat_event, tool_call_event
from harness.waiting import wait_for
from tasks import broadcast

pytestmark = pytest.mark.integration
SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def event(user_id: str, index: int, **overrides):
    return chat_event(index, user_id=user_id, id=f"{user_id}-{index}", **overrides)


def add_hook(service, user_id, sink, **options):
    config = {"url": sink.url + "/hook", "signing_secret": SIGNING_SECRET}
    view = service.add_destination(f"user:{user_id}", "webhook", "Hook", config, **options)
    sink.clear()  # forget the Test Connection request
    return view["id"]


def scripted(script: list[Reply]):
    """Answer the n-th delivery of each request id with `script[n]`, then 200.

    Test Connection requests always pass."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(request):
        if request.headers.get("x-test-connection"):
            return Reply(200, b"{}")
        request_id = json.loads(request.body)["data"]["requestId"]
        with lock:
            index = seen[request_id]
            seen[request_id] += 1
        return script[index] if index < len(script) else Reply(200, b"{}")

    return respond


def test_signed_deliveries_verify_with_standard_webhooks(worker, service, user_id, receiver):
    sink = receiver()
    add_hook(service, user_id, sink)
    for index in range(5):
        broadcast.delay(event(user_id, index))
    received = wait_for(lambda: len(sink.requests("/hook")) == 5 and sink.requests("/hook"))
    verifier = Webhook(SIGNING_SECRET)
    ids = set()
    for request in received:
        payload = verifier.verify(request.body, request.headers)
        assert payload["type"] == "trace.completed"
        assert payload["data"]["schema"] == "broadcast.trace/v1"
        ids.add(request.headers["webhook-id"])
    assert len(ids) == 5


def test_503_then_200_is_delivered_once_with_the_same_webhook_id(
    worker, service, user_id, receiver
):
    sink = receiver(scripted([Reply(503, b"busy")]))
    destination_id = add_hook(service, user_id, sink)
    broadcast.delay(event(user_id, 1))
    wait_for(lambda: service.store.counters(destination_id)["delivered"] == 1)
    attempts = sink.requests("/hook")
    assert len(attempts) == 2
    assert attempts[0].headers["webhook-id"] == attempts[1].headers["webhook-id"]
    assert attempts[0].headers["webhook-signature"] != attempts[1].headers["webhook-signature"] or (
        attempts[0].headers["webhook-timestamp"] == attempts[1].headers["webhook-timestamp"]
    )
    counters = service.store.counters(destination_id)
    assert (counters["retried"], counters["delivered"], counters["failed"]) == (1, 1, 0)
    log = service.deliveries(destination_id)
    assert [entry["outcome"] for entry in log] == ["delivered", "retryable"]
    assert log[1]["status_code"] == 503 and log[1]["next"].startswith("batch retry at ")


def test_429_retry_after_is_honoured(worker, service, user_id, receiver):
    sink = receiver(scripted([Reply(429, b"slow down", {"Retry-After": "2"})]))
    destination_id = add_hook(service, user_id, sink)
    broadcast.delay(event(user_id, 1))
    wait_for(lambda: service.store.counters(destination_id)["delivered"] == 1)
    first, second = sink.requests("/hook")
    assert second.received_at - first.received_at >= 2.0


def test_400_is_permanent_and_not_retried(worker, service, user_id, receiver):
    sink = receiver(scripted([Reply(400, b'{"error":"schema"}')] * 5))
    destination_id = add_hook(service, user_id, sink)
    broadcast.delay(event(user_id, 1))
    wait_for(lambda: service.store.counters(destination_id)["failed"] == 1)
    log = service.deliveries(destination_id)
    assert len(sink.requests("/hook")) == 1
    assert log[0]["outcome"] == "permanent" and log[0]["error"] == 'HTTP 400: {"error":"schema"}'
    assert log[0]["next"] == "dead-lettered"
    assert service.store.counters(destination_id)["retried"] == 0
    [letter] = service.dead_letters(destination_id)
    assert letter.request_id == f"{user_id}-1" and letter.reason.startswith("HTTP 400")


def test_401_marks_auth_failed_and_the_backlog_waits(worker, service, user_id, receiver):
    sink = receiver(scripted([Reply(401, b"token revoked")] * 5))
    destination_id = add_hook(service, user_id, sink)
    broadcast.delay(event(user_id, 1))
    wait_for(lambda: service.store.health(destination_id).status == "auth_failed")
    status = service.status(f"user:{user_id}")[0]
    assert status["health"] == "auth_failed" and "HTTP 401" in status["health_reason"]
    broadcast.delay(event(user_id, 2))  # not attempted: it waits until the credentials work
    wait_for(lambda: service.status(f"user:{user_id}")[0]["backlog"] == 2)
    status = service.status(f"user:{user_id}")[0]
    assert status["delivery"].startswith("paused") and status["next_attempt"]
    assert len(sink.requests("/hook")) == 1
    counters = service.store.counters(destination_id)
    assert (counters["delivered"], counters["failed"], counters["retried"]) == (0, 0, 1)
    log = service.deliveries(destination_id)
    assert log[0]["outcome"] == "auth_failed" and "HTTP 401" in log[0]["error"]
    assert log[0]["next"].startswith("paused: credentials rejected")


def test_privacy_mode_sends_no_prompt_or_completion(worker, service, user_id, receiver):
    sink = receiver()
    add_hook(service, user_id, sink, privacy=True)
    broadcast.delay(
        tool_call_event(1, user_id=user_id, id=f"{user_id}-1", trace={"trace_name": "Weather"})
    )
    request = wait_for(lambda: sink.requests("/hook"))[0]
    body = request.body.decode()
    for text in ("What's the weather", "Paris", 'get_weather","arguments'):
        assert text not in body
    generation = json.loads(body)["data"]["observations"][-1]
    assert generation["input"] is None and generation["output"] is None
    assert generation["usage"]["total"] == 1500 and generation["usage"]["cachedInput"] == 1000
    assert generation["cost"]["total"] == pytest.approx(0.000123)
    assert generation["model"] == "openai/gpt-4o" and generation["startTime"]
    assert json.loads(body)["data"]["name"] == "Weather"


def test_key_filters_through_the_worker(worker, service, user_id, receiver):
    sinks = {name: receiver() for name in ("all", "include", "exclude", "both")}
    ids = {
        "all": add_hook(service, user_id, sinks["all"]),
        "include": add_hook(service, user_id, sinks["include"], api_keys=["k1"]),
        "exclude": add_hook(service, user_id, sinks["exclude"], exclude_api_keys=["k1"]),
        "both": add_hook(service, user_id, sinks["both"], api_keys=["k1"], exclude_api_keys=["k1"]),
    }
    broadcast.delay(event(user_id, 1, api_key_id="k1"))
    broadcast.delay(event(user_id, 2, api_key_id="k2"))
    broadcast.delay(event(user_id, 3, api_key_id=None))  # keyless (chatroom)
    wait_for(lambda: len(sinks["all"].requests()) == 3, what="all three at the open hook")

    def got(name):
        return sorted(json.loads(r.body)["data"]["requestId"] for r in sinks[name].requests())

    wait_for(lambda: len(got("exclude")) == 2 and len(got("include")) == 1)
    assert got("include") == [f"{user_id}-1"]
    assert got("exclude") == [f"{user_id}-2", f"{user_id}-3"]
    wait_for(lambda: service.store.counters(ids["both"])["filtered_by_key"] == 3)
    assert got("both") == []
    assert service.store.counters(ids["include"])["filtered_by_key"] == 2


def test_sampling_through_the_worker(worker, service, user_id, receiver):
    """Rate 0.25 over 4,000 sessions lands within 3 points; a session is wholly in or out."""
    sink = receiver()
    destination_id = add_hook(service, user_id, sink, sampling_rate=0.25)
    sessions = 4000
    for index in range(sessions):
        broadcast.delay(event(user_id, index, session_id=f"s{index}"))
    repeats = [event(user_id, sessions + i, session_id="s7") for i in range(5)]
    for item in repeats:  # five more requests of one session
        broadcast.delay(item)

    def settled():
        counters = service.store.counters(destination_id)
        return counters["delivered"] + counters["sampled_out"] == sessions + len(repeats)

    wait_for(settled, timeout=240, interval=0.5, what="every event to be decided")
    received = [json.loads(r.body)["data"]["sessionId"] for r in sink.requests()]
    kept = {session for session in received if session != "s7"}
    assert abs(len(kept) / sessions - 0.25) <= 0.03
    assert received.count("s7") in (0, 6)  # all of the session's requests, or none


def test_invalid_event_is_rejected_once_while_others_deliver(worker, service, user_id, receiver):
    sink = receiver()
    add_hook(service, user_id, sink)
    broadcast.delay(event(user_id, 1))
    broadcast.delay(event(user_id, 2, usage={"prompt_tokens": -1, "completion_tokens": 1}))
    broadcast.delay({"user_id": user_id, "model": "m"})
    broadcast.delay(event(user_id, 3))
    wait_for(lambda: len(sink.requests()) == 2)
    rejected = wait_for(lambda: len(r := service.rejected_events(f"user:{user_id}")) == 2 and r)
    reasons = sorted(entry["reason"] for entry in rejected)
    assert reasons[0].startswith("id: Missing data for required field.")
    assert reasons[1].startswith("usage.prompt_tokens: Must be greater than or equal to 0")
    assert {entry["id"] for entry in rejected} == {None, f"{user_id}-2"}
    assert service.store.rejected_count(f"user:{user_id}") == 2
    assert worker.alive()


def test_disabled_owner_gets_nothing_and_settings_changes_apply_at_once(
    worker, service, user_id, receiver
):
    sink = receiver()
    destination_id = add_hook(service, user_id, sink)
    service.set_enabled(f"user:{user_id}", False)
    broadcast.delay(event(user_id, 1))
    wait_for(lambda: service.store.counters(destination_id)["skipped_owner_disabled"] == 1)
    service.set_enabled(f"user:{user_id}", True)
    broadcast.delay(event(user_id, 2))
    wait_for(lambda: len(sink.requests()) == 1)
    late = receiver()
    add_hook(service, user_id, late)  # a new destination is seen by the very next event
    broadcast.delay(event(user_id, 3))
    wait_for(lambda: len(late.requests()) == 1 and len(sink.requests()) == 2)
    ids = sorted(json.loads(r.body)["data"]["requestId"] for r in sink.requests())
    assert ids == [f"{user_id}-2", f"{user_id}-3"]
    assert json.loads(late.requests()[0].body)["data"]["requestId"] == f"{user_id}-3"


def test_organization_keys_go_to_the_organization(worker, service, user_id, receiver):
    user_sink, org_sink = receiver(), receiver()
    add_hook(service, user_id, user_sink)
    org = f"org{user_id}"
    service.set_enabled(f"org:{org}", True)
    view = service.add_destination(f"org:{org}", "webhook", "Org", {"url": org_sink.url})
    org_sink.clear()
    broadcast.delay(event(user_id, 1, org_id=org))
    broadcast.delay(event(user_id, 2))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1)
    wait_for(lambda: len(user_sink.requests()) == 1)
    assert json.loads(org_sink.requests()[0].body)["data"]["requestId"] == f"{user_id}-1"
    assert json.loads(user_sink.requests()[0].body)["data"]["requestId"] == f"{user_id}-2"
