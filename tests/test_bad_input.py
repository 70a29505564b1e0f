"""Bad input is exit status 2 (CLI) or a 400 (API) naming the field: never a traceback,
never a 500, nothing changed. Issue 22's cases and their neighbours, as one table."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from broadcast_interfaces.cli import main
from harness.api_server import ApiServer
from harness.samples import destination_configs
from settings.api_keys import ManagementKeys

BROADCAST = str(Path(sys.executable).parent / "broadcast")
API = "/api/v1/observability"


def cli(service, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv), service=service)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def hook(service, receiver) -> tuple[str, str]:
    """(owner, destination id) of a working webhook."""
    owner = f"user:bad{uuid.uuid4().hex[:10]}"
    sink = receiver()
    view = service.add_destination(owner, "webhook", "hook", {"url": sink.url + "/in"})
    return owner, view["id"]


def webhook_config(url: str, headers: dict[str, str]) -> str:
    return json.dumps({"url": url, "headers": headers})


BAD_HEADER_VALUES = {
    "non-Latin-1": "Bearer жук",
    "NUL": "a\x00b",
    "VT": "a\x0bb",
    "DEL": "a\x7fb",
    "newline": "a\nInjected: yes",
    "leading space": " token",
}
BAD_HEADER_NAMES = {"non-ASCII": "X-Tökén", "space": "X Token", "colon": "X:Token", "empty": ""}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["dead-letters", "{id}", "--since", "1e308"], "not a time: '1e308'"),
        (["dead-letters", "{id}", "--since", "nan"], "not a time: 'nan'"),
        (["dead-letters", "{id}", "--until", "inf"], "not a time: 'inf'"),
        (["dead-letters", "{id}", "--since", "-1"], "not a time: '-1'"),
        (["dead-letters", "{id}", "--since", "0001-01-01T00:00:00+14:00"], "not a time"),
        (["dead-letters", "{id}", "--since", "tomorrow"], "not a time: 'tomorrow'"),
        (["replay", "{id}", "--until", "nan"], "not a time: 'nan'"),
        (["dead-letters", "{id}", "--limit", "-1"], "--limit: must be at least 1"),
        (["deliveries", "{id}", "--limit", "x"], "--limit: not a whole number"),
        (["destination", "update", "{id}", "--sampling", "nan"], "sampling rate must be"),
        (["destination", "update", "{id}", "--sampling", "2"], "sampling rate must be"),
        (["destination", "update", "{id}", "--config", "[1]"], "--config must be a JSON object"),
        (["destination", "update", "{id}", "--config", "{"], "--config is not valid JSON"),
        (["destination", "update", "{id}", "--filter-rules", '{"groups": 5}'], "filterRules"),
        (["destination", "show", "dst_nope"], "no destination 'dst_nope'"),
        (["status", "--owner", "user:x\n"], "owner must be user:ID or org:ID"),
        (["enable", "--owner", "user:" + "x" * 129], "owner must be user:ID or org:ID"),
        # Operator-only commands do not offer --actor at all.
        (["keys", "rotate", "--actor", "user:eve"], "unrecognized arguments: --actor"),
        (["unreadable", "--actor", "user:eve"], "unrecognized arguments: --actor"),
        (["metrics", "serve", "--actor", "user:eve"], "unrecognized arguments: --actor"),
        (["deliveries", "{id}", "--limit", "0"], "--limit: must be at least 1, not 0"),
        (["events", "--owner", "user:x", "--limit", "-1"], "--limit: must be at least 1"),
        (["replay", "{id}", "--id", "no-such-request"], "--id takes a request id or a"),
    ],
)
def test_cli_refuses_with_exit_2_naming_the_problem(service, hook, argv, words):
    _owner, destination_id = hook
    status, out, err = cli(service, *[part.replace("{id}", destination_id) for part in argv])
    assert status == 2, (out, err)
    assert err.startswith("broadcast: error: ") and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("label", sorted(BAD_HEADER_VALUES))
def test_cli_refuses_a_header_value_that_cannot_be_sent(service, hook, receiver, label):
    owner, _ = hook
    config = webhook_config(receiver().url, {"X-Token": BAD_HEADER_VALUES[label]})
    status, _, err = cli(service, "destination", "add", "--owner", owner, "--type", "webhook",
                         "--name", "h", "--config", config)  # fmt: skip
    assert status == 2 and "config field 'headers': Header X-Token: the value must be" in err
    assert len(service.list_destinations(owner)) == 1  # nothing saved


@pytest.mark.parametrize("label", sorted(BAD_HEADER_NAMES))
def test_cli_refuses_a_header_name_that_is_no_token(service, hook, receiver, label):
    owner, _ = hook
    config = webhook_config(receiver().url, {BAD_HEADER_NAMES[label]: "v"})
    status, _, err = cli(service, "destination", "add", "--owner", owner, "--type",
                         "otel-collector" if label == "space" else "webhook", "--name", "h",
                         "--config", config.replace('"url"', '"endpoint"')
                         if label == "space" else config)  # fmt: skip
    assert status == 2 and "is not a valid header name (RFC 7230" in err, err


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("bucket", "ab!", "config field 'bucket': Must be 3 to 63 letters"),
        ("bucket", "a" * 64, "config field 'bucket'"),
        ("region", "bad region!", "config field 'region': Must be a region name"),
        ("region", "-east", "config field 'region'"),
        ("region", "123", "config field 'region'"),
    ],
)
def test_cli_refuses_s3_names_botocore_would_refuse(service, moto_server, field, value, words):
    owner = f"user:s3{uuid.uuid4().hex[:10]}"
    config = {**destination_configs(moto_server.url)["s3"], field: value}
    status, _, err = cli(service, "destination", "add", "--owner", owner, "--type", "s3",
                         "--name", "s", "--config", json.dumps(config))  # fmt: skip
    assert status == 2 and words in err, err


def test_a_header_with_latin_1_and_inner_tabs_is_accepted(service, hook, receiver):
    owner, _ = hook
    sink = receiver()
    config = webhook_config(sink.url, {"X-Name": "caf\u00e9\tcr\u00e8me", "X-Empty": ""})
    status, _, err = cli(service, "destination", "add", "--owner", owner, "--type", "webhook",
                         "--name", "ok", "--config", config)  # fmt: skip
    assert status == 0, err
    assert sink.requests()[0].headers["x-name"] == "caf\u00e9\tcr\u00e8me"


def test_the_real_command_exits_2_without_a_traceback(hook):
    _owner, destination_id = hook
    result = subprocess.run([BROADCAST, "dead-letters", destination_id, "--since", "1e308"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("broadcast: error: not a time: '1e308'")


# The API


@pytest.fixture(scope="module")
def api(redis_server, workdir):
    server = ApiServer(os.environ, workdir)
    yield server
    server.stop()


@pytest.fixture
def session(api, service, hook) -> tuple[requests.Session, str]:
    owner, destination_id = hook
    token = ManagementKeys(service.store.redis).create(owner, "bad input").token
    client = requests.Session()
    client.headers["Authorization"] = f"Bearer {token}"
    return client, api.url + API + f"/destinations/{destination_id}"


@pytest.mark.parametrize("value", ["1e308", "nan", "-1", "inf", "0001-01-01T00:00:00+14:00"])
@pytest.mark.parametrize("name", ["since", "until"])
def test_api_answers_400_for_a_time_out_of_range(session, name, value):
    client, base = session
    response = client.get(base + "/dead-letters", params={name: value}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(f"{name}: not a time")


@pytest.mark.parametrize("value", [1e308, -1, "nan"])
def test_api_replay_window_out_of_range_is_400(session, value):
    client, base = session
    response = client.post(base + "/dead-letters/replay", json={"since": value}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("since: not a time")


@pytest.mark.parametrize("label", sorted(BAD_HEADER_VALUES))
def test_api_refuses_a_header_value_that_cannot_be_sent(session, receiver, label):
    client, base = session
    config = {"url": receiver().url, "headers": {"X-Token": BAD_HEADER_VALUES[label]}}
    response = client.patch(base, json={"config": config}, timeout=30)
    assert response.status_code == 400, response.text
    assert "Header X-Token: the value must be" in response.json()["error"]["message"]
