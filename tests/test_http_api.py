"""The management HTTP API, through `broadcast serve` running as a real process on the
tests' Redis, with vendors emulated by real local HTTP servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from harness.api_server import ApiServer
from harness.receiver import Reply
from settings import keys
from settings.api_keys import ManagementKeys, token_hash

BROADCAST = str(Path(sys.executable).parent / "broadcast")
API = "/api/v1/observability"
SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEADER_SECRET = "Bearer hdr_" + "s3cr3t" * 4


@pytest.fixture(scope="module")
def api(redis_server, workdir) -> Iterator[ApiServer]:
    server = ApiServer(os.environ, workdir)
    yield server
    server.stop()


class Client:
    """A dashboard holding one owner's management key."""

    def __init__(self, base: str, token: str, owner: str) -> None:
        self.base = base
        self.owner = owner
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.base + API + path, timeout=30, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    def error(self, method: str, path: str, status: int, **kwargs: Any) -> dict[str, str]:
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        return body["error"]


def new_owner() -> str:
    return f"user:api{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client_for(api, service):
    def make(owner: str | None = None) -> Client:
        owner = owner or new_owner()
        service.set_enabled(owner, True)
        created = ManagementKeys(service.store.redis).create(owner, "tests")
        return Client(api.url, created.token, owner)

    return make


@pytest.fixture
def client(client_for) -> Client:
    return client_for()


@pytest.fixture
def sink(receiver):
    state = {"reply": Reply(200, b"{}")}
    instance = receiver(lambda _request: state["reply"])
    instance.state = state
    return instance


def hook(sink, **fields: Any) -> dict[str, Any]:
    return {
        "name": "Hook",
        "type": "webhook",
        "config": {
            "url": sink.url + "/hook",
            "signing_secret": SIGNING_SECRET,
            "headers": {"Authorization": HEADER_SECRET},
        },
        **fields,
    }


def test_crud_with_masked_secrets(client, sink, service):
    created = client.ok("POST", "/destinations", 201, json=hook(sink, samplingRate=0.5))["data"]
    assert created["type"] == "webhook" and created["name"] == "Hook"
    assert created["apiKeys"] is None and created["excludedApiKeys"] == []
    assert created["samplingRate"] == 0.5 and created["privacyMode"] is False
    assert created["config"]["signing_secret"] == "****" + SIGNING_SECRET[-4:]
    assert created["config"]["headers"] == {"Authorization": "****" + HEADER_SECRET[-4:]}
    assert sink.requests("/hook")[0].headers["x-test-connection"] == "true"

    dest_id = created["id"]
    for response in (
        client.call("GET", "/destinations"),
        client.call("GET", f"/destinations/{dest_id}"),
        client.call("GET", "/status"),
    ):
        assert SIGNING_SECRET not in response.text and HEADER_SECRET not in response.text
    listed = client.ok("GET", "/destinations")
    assert listed["totalCount"] == 1 and [d["id"] for d in listed["data"]] == [dest_id]
    assert client.ok("GET", f"/destinations/{dest_id}")["data"] == created

    updated = client.ok("PATCH", f"/destinations/{dest_id}", json={"name": "Renamed"})["data"]
    assert updated["name"] == "Renamed"
    # Unset fields keep their value.
    assert {k: v for k, v in updated.items() if k not in ("name", "updatedAt")} == {
        k: v for k, v in created.items() if k not in ("name", "updatedAt")
    }

    assert client.ok("DELETE", f"/destinations/{dest_id}") == {"deleted": True}
    client.error("GET", f"/destinations/{dest_id}", 404)
    assert client.ok("GET", "/destinations") == {"data": [], "totalCount": 0}
    assert service.store.get_destination(dest_id) is None


def test_masked_values_sent_back_keep_the_stored_secrets(client, sink, service):
    created = client.ok("POST", "/destinations", 201, json=hook(sink))["data"]
    config = dict(created["config"], method="PUT")  # masks sent back unchanged
    updated = client.ok("PATCH", f"/destinations/{created['id']}", json={"config": config})
    assert updated["data"]["config"]["method"] == "PUT"
    stored = service.decrypted_config(service.store.get_destination(created["id"]))
    assert stored["signing_secret"] == SIGNING_SECRET
    assert stored["headers"] == {"Authorization": HEADER_SECRET}
    # The config change ran Test Connection with the real secret, not its mask.
    assert sink.requests("/hook")[-1].headers["authorization"] == HEADER_SECRET


def test_test_connection_gates_create_and_config_changes(client, sink, service):
    sink.state["reply"] = Reply(401, b"bad token")
    error = client.error("POST", "/destinations", 400, json=hook(sink))
    assert error["code"] == "test_connection_failed"
    assert "nothing saved" in error["message"]
    assert client.ok("GET", "/destinations")["totalCount"] == 0

    sink.state["reply"] = Reply(200, b"{}")
    dest_id = client.ok("POST", "/destinations", 201, json=hook(sink))["data"]["id"]
    sink.state["reply"] = Reply(403, b"no")
    error = client.error(
        "PATCH", f"/destinations/{dest_id}", 400, json={"config": {"method": "PUT"}}
    )
    assert error["code"] == "test_connection_failed"
    assert service.store.get_destination(dest_id).config.get("method", "POST") == "POST"
    # A change that is not a config change needs no Test Connection.
    client.ok("PATCH", f"/destinations/{dest_id}", json={"samplingRate": 0.25})

    result = client.ok("POST", f"/destinations/{dest_id}/test")["data"]
    assert result["ok"] is False and result["statusCode"] == 403
    assert client.ok("GET", f"/destinations/{dest_id}")["data"]["health"] == "auth_failed"
    sink.state["reply"] = Reply(200, b"{}")
    assert client.ok("POST", f"/destinations/{dest_id}/test")["data"]["ok"] is True


def test_at_most_five_of_a_type(client, sink):
    for index in range(5):
        client.ok("POST", "/destinations", 201, json=hook(sink, name=f"Hook {index}"))
    error = client.error("POST", "/destinations", 409, json=hook(sink, name="Hook 6"))
    assert error["code"] == "limit_reached" and "at most 5" in error["message"]
    assert client.ok("GET", "/destinations")["totalCount"] == 5


def test_api_key_lists(client, sink):
    error = client.error("POST", "/destinations", 400, json=hook(sink, apiKeys=[]))
    assert error["message"].startswith("apiKeys: must contain at least one")
    created = client.ok(
        "POST", "/destinations", 201, json=hook(sink, apiKeys=["k1"], excludedApiKeys=["k2"])
    )["data"]
    assert created["apiKeys"] == ["k1"] and created["excludedApiKeys"] == ["k2"]
    path = f"/destinations/{created['id']}"
    client.error("PATCH", path, 400, json={"apiKeys": []})
    cleared = client.ok("PATCH", path, json={"apiKeys": None})["data"]
    assert cleared["apiKeys"] is None and cleared["excludedApiKeys"] == ["k2"]


RULES = {
    "enabled": True,
    "groups": [
        {
            "logic": "or",
            "rules": [{"field": "model", "operator": "starts_with", "value": "openai/"}],
        }
    ],
}


def test_filter_rules_are_stored_validated_and_cleared(client, sink):
    created = client.ok("POST", "/destinations", 201, json=hook(sink, filterRules=RULES))["data"]
    assert created["filterRules"] == {
        "enabled": True,
        "groups": [
            {
                "logic": "or",
                "rules": [{"field": "model", "operator": "starts_with", "value": "openai/"}],
            }
        ],
    }
    path = f"/destinations/{created['id']}"
    assert (
        client.ok("PATCH", path, json={"name": "x"})["data"]["filterRules"]
        == (created["filterRules"])
    )
    assert client.ok("PATCH", path, json={"filterRules": None})["data"]["filterRules"] is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"samplingRate": 0}, "samplingRate: Input should be greater than or equal to 0.0001"),
        ({"samplingRate": 1.5}, "samplingRate: Input should be less than or equal to 1"),
        ({"samplingrate": 0.5}, "samplingrate: Extra inputs are not permitted"),
        ({"name": ""}, "name: String should have at least 1 character"),
        ({"type": "carrier-pigeon"}, "unknown destination type 'carrier-pigeon'"),
        ({"config": {}}, "webhook config field 'url'"),
        ({"config": "x"}, "config: Input should be a valid dictionary"),
        (
            {"filterRules": {"groups": [{"rules": [{"field": "colour", "operator": "equals"}]}]}},
            "filterRules.groups.0.rules.0.field: Input should be",
        ),
        (
            {"filterRules": {"groups": [{"rules": [{"field": "model", "operator": "gt"}]}]}},
            "filterRules.groups[0].rules[0].operator: 'gt' does not apply to the string field",
        ),
        (
            {
                "filterRules": {
                    "groups": [{"rules": [{"field": "input", "operator": "regex", "value": "(a"}]}]
                }
            },
            "filterRules.groups[0].rules[0].value: not a valid RE2 regex",
        ),
        (
            {"filterRules": {"groups": [{"logic": "and", "rules": []}]}},
            "filterRules.groups.0.rules: List should have at least 1 item",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client, sink, body, message):
    error = client.error("POST", "/destinations", 400, json={**hook(sink), **body})
    assert error["code"] == "invalid_request"
    assert message in error["message"], error["message"]
    assert client.ok("GET", "/destinations")["totalCount"] == 0


def test_malformed_requests_get_json_errors(client, api):
    error = client.error(
        "POST",
        "/destinations",
        400,
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert error == {"code": "invalid_request", "message": error["message"]}
    assert error["message"].startswith("body: not valid JSON (")
    assert client.error("GET", "/nowhere", 404)["code"] == "not_found"
    assert client.error("PUT", "/destinations", 405)["code"] == "method_not_allowed"
    assert client.error("GET", "/destinations?limit=0", 400)["message"].startswith("query.limit:")
    anonymous = requests.get(api.url + API + "/destinations", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    forged = requests.get(
        api.url + API + "/destinations", headers={"Authorization": "Bearer bmk_x"}, timeout=10
    )
    assert forged.status_code == 401


def test_owners_see_nothing_of_each_other(client_for, sink):
    alice, mallory = client_for(), client_for()
    dest_id = alice.ok("POST", "/destinations", 201, json=hook(sink))["data"]["id"]
    missing = mallory.error("GET", "/destinations/dst_doesnotexist", 404)
    for method, path, body in (
        ("GET", f"/destinations/{dest_id}", None),
        ("PATCH", f"/destinations/{dest_id}", {"name": "mine now"}),
        ("DELETE", f"/destinations/{dest_id}", None),
        ("POST", f"/destinations/{dest_id}/test", None),
        ("GET", f"/destinations/{dest_id}/deliveries", None),
        ("GET", f"/destinations/{dest_id}/dead-letters", None),
        ("POST", f"/destinations/{dest_id}/dead-letters/replay", {}),
    ):
        error = mallory.error(method, path, 404, json=body)
        assert error == {
            **missing,
            "message": missing["message"].replace("dst_doesnotexist", dest_id),
        }
    assert mallory.ok("GET", "/destinations")["totalCount"] == 0
    assert mallory.ok("GET", "/status")["data"]["destinations"] == []
    assert alice.ok("GET", f"/destinations/{dest_id}")["data"]["name"] == "Hook"


def test_organization_key_manages_the_organization(client_for, sink, service):
    org = f"org:o{uuid.uuid4().hex[:8]}"
    org_client, user_client = client_for(org), client_for()
    dest_id = org_client.ok("POST", "/destinations", 201, json=hook(sink))["data"]["id"]
    assert service.store.get_destination(dest_id).owner == org
    user_client.error("GET", f"/destinations/{dest_id}", 404)


def test_inspection_endpoints(client, sink, service):
    dest_id = client.ok("POST", "/destinations", 201, json=hook(sink))["data"]["id"]
    status = client.ok("GET", "/status")["data"]
    assert status["owner"] == client.owner and status["enabled"] is True
    [row] = status["destinations"]
    assert row["id"] == dest_id and row["counters"]["delivered"] == 0
    assert client.ok("GET", f"/destinations/{dest_id}/deliveries") == {"data": []}
    assert client.ok("GET", f"/destinations/{dest_id}/dead-letters") == {"data": []}
    error = client.error(
        "POST", f"/destinations/{dest_id}/dead-letters/replay", 404, json={"ids": ["1-0"]}
    )
    assert error["message"] == (
        "ids: no dead letter has the id 1-0 (a request id or a dead-letter id)"
    )
    error = client.error(
        "POST",
        f"/destinations/{dest_id}/dead-letters/replay",
        404,
        json={"requestIds": ["gen-nope"], "again": True},
    )
    assert error["message"].startswith("ids: no dead letter has the id gen-nope")
    assert client.ok("POST", f"/destinations/{dest_id}/dead-letters/replay", json={}) == {
        "data": {
            "sent": 0,
            "skippedDelivered": 0,
            "skippedNoTrace": 0,
            "requestIds": [],
            "skippedRequestIds": [],
        }
    }
    client.error("GET", f"/destinations/{dest_id}/dead-letters?since=yesterday", 400)
    assert client.ok("GET", "/events")["data"] == []
    assert client.ok("GET", "/rejected") == {"data": []}

    assert client.ok("PATCH", "/owner", json={"enabled": False})["data"]["enabled"] is False
    assert service.store.is_enabled(client.owner) is False
    assert client.ok("GET", "/owner")["data"] == {"owner": client.owner, "enabled": False}
    assert client.error("PATCH", "/owner", 400, json={"enabled": "maybe"})["message"].startswith(
        "enabled:"
    )


def cli(*argv: str) -> Any:
    result = subprocess.run(
        [BROADCAST, *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_management_keys_are_shown_once_stored_hashed_and_revocable(api, service):
    owner = new_owner()
    created = cli("api-keys", "create", "--owner", owner, "--name", "dashboard")
    token = created["key"]
    assert token.startswith("bmk_") and created["owner"] == owner
    listed = cli("api-keys", "list", "--owner", owner)
    assert listed == [
        {
            "id": created["id"],
            "owner": owner,
            "name": "dashboard",
            "created_at": created["created_at"],
        }
    ]
    # Only the hash is stored.
    redis_client = service.store.redis
    record = redis_client.hgetall(keys.management_key(created["id"]))
    assert record[b"hash"].decode() == token_hash(token)
    assert all(token.encode() not in value for value in record.values())
    assert redis_client.hget(keys.MANAGEMENT_KEYS_BY_HASH, token_hash(token)) is not None

    dashboard = Client(api.url, token, owner)
    assert dashboard.ok("GET", "/destinations")["totalCount"] == 0
    assert cli("api-keys", "revoke", created["id"]) == {
        "id": created["id"],
        "owner": owner,
        "revoked": True,
    }
    assert dashboard.error("GET", "/destinations", 401)["code"] == "unauthorized"
    assert cli("api-keys", "list", "--owner", owner) == []
    refused = subprocess.run(
        [BROADCAST, "api-keys", "revoke", created["id"]],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"broadcast: error: no management key '{created['id']}'"


def test_openapi_document_is_served(api):
    document = requests.get(api.url + "/openapi.json", timeout=10).json()
    assert f"{API}/destinations" in document["paths"]
    assert set(document["paths"][f"{API}/destinations/{{destination_id}}"]) == {
        "get",
        "patch",
        "delete",
    }
    assert "FilterRules" in document["components"]["schemas"]


# Property-based: requests generated from the served OpenAPI document, valid and not.
# (schemathesis's own pytest plugin does not run on pytest 9, so the strategies are driven
# with hypothesis directly.) CI runs 15 examples per operation and mode; set
# BROADCAST_SCHEMATHESIS_EXAMPLES=72 for a run of 2,448 requests (17 operations x 2 modes).
SCHEMATHESIS_EXAMPLES = int(os.environ.get("BROADCAST_SCHEMATHESIS_EXAMPLES", "15"))
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_makes_a_server_error(api, service, mode):
    token = ManagementKeys(service.store.redis).create(new_owner(), "fuzz").token
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    session = requests.Session()
    checked: list[str] = []
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=SCHEMATHESIS_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def no_server_error(case) -> None:
            response = case.call(
                session=session, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"code", "message"}, response.text
            # The answer is one the document declares: its status, content type, headers
            # and body schema (errors and successes alike).
            case.validate_response(response, checks=CONFORMANCE)

        no_server_error()
        checked.append(operation.label)
    assert len(checked) >= 17, checked
    assert len(statuses) >= 5 * len(checked), len(statuses)
    print(f"{mode.value}: {len(statuses)} requests, statuses {sorted(set(statuses))}, "
          f"server errors {sum(status >= 500 for status in statuses)}")  # fmt: skip


# The CLI side of the same features.


def refused(*argv: str) -> str:
    result = subprocess.run(
        [BROADCAST, *argv], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    return result.stderr.strip()


def test_cli_api_keys_check_the_actor(service):
    org = f"o{uuid.uuid4().hex[:8]}"
    service.add_member(org, "alice", "admin")
    service.add_member(org, "bob", "member")
    message = refused("api-keys", "create", "--owner", f"org:{org}", "--actor", "user:bob")
    assert message == f"broadcast: error: user:bob is not an admin of organization {org}"
    created = cli("api-keys", "create", "--owner", f"org:{org}", "--actor", "user:alice")
    message = refused("api-keys", "revoke", created["id"], "--actor", "user:bob")
    assert message == f"broadcast: error: user:bob is not an admin of organization {org}"
    assert cli("api-keys", "list", "--owner", f"org:{org}")[0]["id"] == created["id"]
    message = refused("api-keys", "create", "--owner", "nobody")
    assert message == "broadcast: error: owner must be user:ID or org:ID, not 'nobody'"


def test_cli_filter_rules(service, sink, tmp_path):
    owner = new_owner()
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(RULES))
    config = json.dumps({"url": sink.url + "/hook"})
    added = cli(
        "destination", "add", "--owner", owner, "--type", "webhook", "--name", "Hook",
        "--config", config, "--filter-rules", f"@{rules_file}",
    )  # fmt: skip
    assert added["filterRules"]["groups"][0]["rules"][0]["value"] == "openai/"
    bad = json.dumps({"groups": [{"rules": [{"field": "cost", "operator": "gt", "value": 1}]}]})
    message = refused("destination", "update", added["id"], "--filter-rules", bad)
    assert message.startswith(
        "broadcast: error: filterRules.groups[0].rules[0].field: unknown field 'cost'"
    )
    message = refused("destination", "update", added["id"], "--filter-rules", "[1]")
    assert message == "broadcast: error: --filter-rules must be a JSON object"
    cleared = cli("destination", "update", added["id"], "--filter-rules", "{}")
    assert cleared["filterRules"] is None


def test_types_are_listed_and_in_the_openapi_document(client, api):
    from destinations.registry import known_types

    listed = {item["type"]: item for item in client.ok("GET", "/types")["data"]}
    assert set(listed) == set(known_types())
    assert {"posthog", "opik", "sentry", "raindrop", "ramp", "firehose"} <= set(listed)
    fields = {field["name"]: field for field in listed["firehose"]["config"]}
    assert fields["secret_access_key"] == {
        "name": "secret_access_key",
        "required": True,
        "secret": True,
        "url": False,
    }
    assert fields["endpoint_url"]["url"] and fields["headers"]["secret"]
    document = requests.get(api.url + "/openapi.json", timeout=10).json()
    assert f"{API}/types" in document["paths"]
    create = document["components"]["schemas"]["DestinationCreate"]["properties"]["type"]
    assert create["enum"] == known_types()
    assert requests.get(api.url + API + "/types", timeout=10).status_code == 401


def test_cli_json_has_the_api_field_names(client, sink):
    """A script written against the API reads `broadcast ... --json` alike."""
    created = client.ok("POST", "/destinations", 201, json=hook(sink, samplingRate=0.5))["data"]
    shown = cli("destination", "show", created["id"])
    assert shown == {**created, "owner": client.owner}
    assert cli("destination", "list", "--owner", client.owner) == [shown]
    sink.state["reply"] = Reply(401, b"no")
    tested = client.ok("POST", f"/destinations/{created['id']}/test")["data"]
    assert set(tested) == {"ok", "message", "statusCode"} and tested["ok"] is False
    [api_event] = client.ok("GET", "/events")["data"]
    [cli_event] = cli("events", "--owner", client.owner)
    assert cli_event == api_event and api_event["at"].endswith("+00:00")
    assert set(cli("replay", created["id"])) == {
        "id",
        *client.ok("POST", f"/destinations/{created['id']}/dead-letters/replay", json={})["data"],
    }
