"""The OpenAPI document states what the management API really answers.

For every route of the served document and every error status it declares, a request
that is bad in that status's way (no key: 401; an unknown id: 404; invalid input: 400;
the owner's limit reached: 409; a body past the limit: 413; a throttled address: 429;
the store down: 503) gets that status, which the route declares, with a body that
matches the declared error schema, carries one of the codes the document lists for it
and the headers it promises. Real `broadcast serve` processes on the tests' Redis (and on
a Redis that is not there, for 503); tests/test_http_api.py runs schemathesis's
conformance checks over the same document with generated requests.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import jsonschema
import pytest
import requests

from harness.api_server import ApiServer
from harness.processes import free_port
from harness.receiver import Reply
from settings.api_keys import ManagementKeys

API = "/api/v1/observability"
# Values of path parameters that exist (a warehouse type) or need not (a destination:
# every status here but 404 is decided before the destination is looked up).
PATH_VALUES = {"destination_id": "dst_contract", "type_name": "clickhouse"}
UNKNOWN_PATH_VALUES = {"destination_id": "dst_nosuchdestination", "type_name": "nosuchtype"}
GUARDED = {401, 413, 429, 503}  # answered by the guard before any route runs


def _without_auth_settings(env: Mapping[str, str]) -> dict[str, str]:
    # The default throttle (10 failures a minute), whatever the environment says.
    return {name: value for name, value in env.items()
            if not name.startswith("BROADCAST_API_AUTH_")}  # fmt: skip


@pytest.fixture(scope="module")
def api(redis_server, workdir) -> Iterator[ApiServer]:
    server = ApiServer(_without_auth_settings(os.environ), workdir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def document(api) -> dict[str, Any]:
    return requests.get(api.url + "/openapi.json", timeout=10).json()


@pytest.fixture
def token(service) -> str:
    owner = f"user:contract{uuid.uuid4().hex[:10]}"
    service.set_enabled(owner, True)
    return ManagementKeys(service.store.redis).create(owner, "contract").token


def an_address() -> str:
    """A client address of the request's own (the server trusts its loopback proxy's
    X-Forwarded-For), so no test is throttled by another's failed keys."""
    return f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def declared(self) -> set[int]:
        return {int(status) for status in self.spec["responses"]}

    def parameters(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p["in"] == where]

    def target(self, values: Mapping[str, str], query: Mapping[str, str] | None = None) -> str:
        path = self.path
        for parameter in self.parameters("path"):
            name = parameter["name"]
            path = path.replace(f"{{{name}}}", quote(values[name], safe=""))
        return path + (f"?{urlencode(query)}" if query else "")


def operations(document: dict[str, Any]) -> list[Operation]:
    found = [
        Operation(method.upper(), path, spec)
        for path, methods in document["paths"].items()
        if path.startswith(API)
        for method, spec in methods.items()
    ]
    assert len(found) >= 17, [op.label for op in found]
    return found


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def send(
    api: ApiServer,
    method: str,
    target: str,
    *,
    token: str | None = None,
    address: str | None = None,
    body: Any = None,
    declared_length: int | None = None,
) -> Answer:
    """One request on its own connection. `declared_length`: send only the headers,
    with that `Content-Length` (the server must answer without reading a body)."""
    headers = {"X-Forwarded-For": address or an_address()}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        if declared_length is None:
            connection.request(method, target, body=payload, headers=headers)
        else:
            connection.putrequest(method, target)
            for name, value in {**headers, "Content-Length": str(declared_length)}.items():
                connection.putheader(name, value)
            connection.endheaders()
        response = connection.getresponse()
        return Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def a_body(op: Operation, document: dict[str, Any]) -> dict[str, Any] | None:
    """`{}` for a route that takes a body (None: it takes none). A valid body where the
    route's body has no required field; the guard's statuses do not look at it."""
    if "requestBody" not in op.spec:
        return None
    return {}


def takes_an_empty_body(op: Operation, document: dict[str, Any]) -> bool:
    if "requestBody" not in op.spec:
        return True
    reference = op.spec["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return not document["components"]["schemas"][reference.rsplit("/", 1)[1]].get("required")


def check_declared(document: dict[str, Any], op: Operation, answer: Answer, status: int) -> None:
    """`answer` is the error `status`, declared by `op` with this body and these headers."""
    assert answer.status == status, (op.label, answer.status, answer.body[:300])
    assert status in op.declared, f"{op.label} answered {status}, declared {op.declared}"
    declared = op.spec["responses"][str(status)]
    assert answer.headers["content-type"] == "application/json", (op.label, answer.headers)
    body = json.loads(answer.body)
    schema = declared["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": document["components"]})
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert f"`{body['error']['code']}`" in declared["description"], (op.label, body)
    for header in declared.get("headers", {}):
        assert header.lower() in answer.headers, (op.label, status, header)


def test_every_route_declares_the_errors_it_can_answer(document):
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    for op in operations(document):
        assert 422 not in op.declared, op.label  # validation errors are answered 400
        assert GUARDED <= op.declared, op.label
        assert any(200 <= status < 300 for status in op.declared), op.label
        if op.parameters("path"):
            assert 404 in op.declared, op.label
        if op.spec.get("parameters") or "requestBody" in op.spec:
            assert 400 in op.declared, op.label
        for status, response in op.spec["responses"].items():
            schema = response["content"]["application/json"]["schema"]
            if int(status) >= 400:
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (op.label, status)
            else:
                assert "$ref" in schema, (op.label, status)  # a response model, not "any"


def test_no_key_is_401(api, document):
    for op in operations(document):
        answer = send(api, op.method, op.target(PATH_VALUES), body=a_body(op, document))
        check_declared(document, op, answer, 401)
        assert answer.headers["www-authenticate"] == "Bearer"


def test_an_unknown_id_is_404(api, document, token):
    declaring = [op for op in operations(document) if 404 in op.declared]
    assert len(declaring) >= 9
    for op in declaring:
        assert op.parameters("path"), f"{op.label} declares 404: no request recipe for it"
        assert takes_an_empty_body(op, document), f"{op.label}: no valid body for a 404"
        target = op.target(UNKNOWN_PATH_VALUES)
        answer = send(api, op.method, target, token=token, body=a_body(op, document))
        check_declared(document, op, answer, 404)


def invalid_value(schema: dict[str, Any]) -> str | None:
    """A value that breaks one of the parameter's constraints, or None if it has none."""
    for option in (schema, *schema.get("anyOf", ())):
        if "minimum" in option:
            return str(option["minimum"] - 1)
        if "maximum" in option:
            return str(option["maximum"] + 1)
        if "maxLength" in option:
            return "x" * (option["maxLength"] + 1)
        if option.get("minLength", 0) > 0:
            return ""
    return None


def an_invalid_request(op: Operation, document: dict[str, Any]) -> dict[str, Any]:
    """The target and body of a request to `op` that breaks its declared input: an
    unknown body field, else a query parameter out of its range, else a path parameter."""
    if "requestBody" in op.spec:
        return {"target": op.target(PATH_VALUES), "body": {"notAField": 1}}
    for parameter in op.parameters("query"):
        if (value := invalid_value(parameter["schema"])) is not None:
            return {"target": op.target(PATH_VALUES, {parameter["name"]: value})}
    for parameter in op.parameters("path"):
        if (value := invalid_value(parameter["schema"])) is not None:
            return {"target": op.target({**PATH_VALUES, parameter["name"]: value})}
    raise AssertionError(f"{op.label} declares 400: no request recipe for it")


def test_invalid_input_is_400(api, document, token):
    declaring = [op for op in operations(document) if 400 in op.declared]
    assert len(declaring) >= 13
    for op in declaring:
        request = an_invalid_request(op, document)
        answer = send(api, op.method, request["target"], token=token, body=request.get("body"))
        check_declared(document, op, answer, 400)
        assert json.loads(answer.body)["error"]["code"] == "invalid_request"


def test_a_body_past_the_limit_is_413(api, document, token):
    for op in operations(document):
        answer = send(api, op.method, op.target(PATH_VALUES), token=token,
                      declared_length=10 * 1024 * 1024)  # fmt: skip
        check_declared(document, op, answer, 413)


def test_a_throttled_address_is_429(api, document, token):
    address = an_address()
    for attempt in range(10):  # the default number of failures that slows an address
        assert send(api, "GET", f"{API}/status", token=f"bmk_wrong{attempt}",
                    address=address).status == 401  # fmt: skip
    for op in operations(document):
        answer = send(api, op.method, op.target(PATH_VALUES), token=token, address=address,
                      body=a_body(op, document))  # fmt: skip
        check_declared(document, op, answer, 429)
        assert int(answer.headers["retry-after"]) >= 1


def test_the_owners_limit_is_409(api, document, token, receiver):
    sink = receiver(lambda _request: Reply(200, b"{}"))
    declaring = [op for op in operations(document) if 409 in op.declared]
    assert [op.label for op in declaring] == [f"POST {API}/destinations"]
    [op] = declaring
    body = {"name": "Hook", "type": "webhook", "config": {"url": sink.url + "/hook"}}
    for _ in range(5):
        assert send(api, op.method, op.target({}), token=token, body=body).status == 201
    check_declared(document, op, send(api, op.method, op.target({}), token=token, body=body), 409)


def test_a_store_down_is_503(document, workdir):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "BROADCAST_BROKER_URL": dead, "BROADCAST_STORE_URL": dead}
    server = ApiServer(env, workdir)
    try:
        for op in operations(document):
            answer = send(server, op.method, op.target(PATH_VALUES), token="bmk_any",
                          body=a_body(op, document))  # fmt: skip
            check_declared(document, op, answer, 503)
    finally:
        server.stop()
