"""The settings service: validation, Test Connection before save, limits, roles, masking."""

from __future__ import annotations

import uuid

import pytest

from broadcast_interfaces.service import SettingsError
from harness.receiver import Reply

SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def sink(receiver):
    return receiver()


def hook(sink, **extra):
    return {"url": sink.url + "/hook", **extra}


def test_add_runs_test_connection_and_saves(service, user_id, sink):
    view = service.add_destination(f"user:{user_id}", "webhook", "Hook", hook(sink))
    assert view["id"].startswith("dst_")
    test_request = sink.requests("/hook")[0]
    assert test_request.headers["x-test-connection"] == "true"
    assert [d["id"] for d in service.list_destinations(f"user:{user_id}")] == [view["id"]]


def test_failed_test_connection_saves_nothing(service, user_id, receiver):
    sink = receiver(lambda _r: Reply(401, b"bad token"))
    with pytest.raises(SettingsError, match="Test Connection failed, nothing saved"):
        service.add_destination(f"user:{user_id}", "webhook", "Hook", hook(sink))
    assert service.list_destinations(f"user:{user_id}") == []


def test_sixth_destination_of_a_type_is_refused(service, user_id, sink):
    owner = f"user:{user_id}"
    for index in range(5):
        service.add_destination(owner, "webhook", f"Hook {index}", hook(sink))
    with pytest.raises(SettingsError, match="already has 5 webhook destinations"):
        service.add_destination(owner, "webhook", "Hook 6", hook(sink))
    assert len(service.list_destinations(owner)) == 5


@pytest.mark.parametrize(
    ("type_", "config", "message"),
    [
        ("carrier-pigeon", {}, "unknown destination type 'carrier-pigeon'"),
        ("webhook", {}, "webhook config field 'url': Missing data for required field."),
        ("webhook", {"url": "http://x", "colour": "red"}, "config field 'colour': Unknown field."),
        ("webhook", {"url": "http://127.0.0.1:1/", "method": "GET"}, "config field 'method'"),
        (
            "webhook",
            {"url": "http://127.0.0.1:1/", "signing_secret": "nope"},
            "config field 'signing_secret': Must start with 'whsec_'.",
        ),
    ],
)
def test_config_mistakes_name_the_problem(service, user_id, type_, config, message):
    with pytest.raises(SettingsError) as caught:
        service.add_destination(f"user:{user_id}", type_, "x", config)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert service.list_destinations(f"user:{user_id}") == []


def test_organization_admins_only(service, sink):
    org = f"o{uuid.uuid4().hex[:8]}"
    service.add_member(org, "alice", "admin")
    service.add_member(org, "bob", "member")
    view = service.add_destination(
        f"org:{org}", "webhook", "Org hook", hook(sink), actor="user:alice"
    )
    with pytest.raises(SettingsError, match="user:bob is not an admin of organization"):
        service.add_destination(f"org:{org}", "webhook", "Bob's", hook(sink), actor="user:bob")
    with pytest.raises(SettingsError, match="not an admin"):
        service.update_destination(view["id"], sampling_rate=0.5, actor="user:bob")
    with pytest.raises(SettingsError, match="not an admin"):
        service.set_enabled(f"org:{org}", True, actor="user:bob")
    with pytest.raises(SettingsError, match="not an admin"):
        service.add_member(org, "bob", "admin", actor="user:bob")
    assert service.show_destination(view["id"])["sampling_rate"] == 1.0
    with pytest.raises(SettingsError, match="may not change the settings of user:alice"):
        service.set_enabled("user:alice", True, actor="user:bob")


def test_secrets_are_masked_and_a_masked_value_keeps_the_secret(service, user_id, sink):
    token = "Bearer tok_" + uuid.uuid4().hex
    view = service.add_destination(
        f"user:{user_id}",
        "webhook",
        "Hook",
        hook(sink, headers={"Authorization": token}, signing_secret=SIGNING_SECRET),
    )
    shown = view["config"]
    assert shown["headers"]["Authorization"] == "****" + token[-4:]
    assert shown["signing_secret"] == "****" + SIGNING_SECRET[-4:]
    assert token not in repr(view) and SIGNING_SECRET not in repr(view)

    sink.clear()
    service.update_destination(view["id"], config=shown)  # round-trip the masked view
    assert sink.requests("/hook")[0].headers["authorization"] == token

    service.update_destination(view["id"], config={"headers": {"Authorization": "Bearer new"}})
    record = service.store.get_destination(view["id"])
    assert service.decrypted_config(record)["headers"] == {"Authorization": "Bearer new"}
    assert service.decrypted_config(record)["signing_secret"] == SIGNING_SECRET


def test_update_with_failing_test_connection_changes_nothing(service, user_id, receiver):
    answers = iter([Reply(200), Reply(403, b"denied")])
    sink = receiver(lambda _r: next(answers))
    view = service.add_destination(f"user:{user_id}", "webhook", "Hook", hook(sink))
    with pytest.raises(SettingsError, match="Test Connection failed"):
        service.update_destination(view["id"], config={"method": "PUT"})
    assert service.show_destination(view["id"])["config"]["method"] == "POST"


def test_owner_and_rate_checks(service, user_id, sink):
    with pytest.raises(SettingsError, match="owner must be user:ID or org:ID"):
        service.set_enabled("team:x", True)
    with pytest.raises(SettingsError, match=r"sampling rate must be in \(0, 1\]"):
        service.add_destination(f"user:{user_id}", "webhook", "x", hook(sink), sampling_rate=0)


def test_remove(service, user_id, sink):
    view = service.add_destination(f"user:{user_id}", "webhook", "Hook", hook(sink))
    service.remove_destination(view["id"])
    with pytest.raises(SettingsError, match="no destination"):
        service.show_destination(view["id"])
