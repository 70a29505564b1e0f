"""End to end into a real Arize Phoenix: `phoenix serve` on loopback (SQLite, no auth),
traces delivered by the `phoenix` destination (directly, and through `broadcast.delay`
and a real Celery worker), read back through Phoenix's REST API as Phoenix shows them.

Needs `arize-phoenix` (tests/requirements-otlp.txt).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from broadcast_engine.events import build_trace
from destinations.base import DeliveryContext
from destinations.outcomes import Outcome
from destinations.phoenix import PhoenixDestination
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.processes import ManagedProcess, free_port, scratch_dir
from harness.samples import chat_event, error_event, tool_call_event
from harness.waiting import wait_for

STARTUP_TIMEOUT = 120.0
READ_TIMEOUT = 30.0


class PhoenixServer:
    """A throwaway `phoenix serve` on free loopback ports, with its own working directory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir = scratch_dir("broadcast-phoenix-")
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(workdir),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(free_port()),
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ENABLE_AUTH": "false",
        }
        self.process = ManagedProcess(
            "phoenix", [sys.executable, "-m", "phoenix.server.main", "serve"], env, workdir
        )

    def wait_until_healthy(self) -> PhoenixServer:
        wait_for(self._healthy, timeout=STARTUP_TIMEOUT, interval=0.2, what="Phoenix to start")
        return self

    def _healthy(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"phoenix serve exited:\n{self.process.log_tail()}")
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).ok
        except requests.ConnectionError:
            return False

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", params=params, timeout=10)

    def spans(self, project: str) -> list[dict[str, Any]]:
        response = self.get(f"/v1/projects/{project}/spans", limit=1000)
        if response.status_code == 404:  # the project appears with its first span
            return []
        response.raise_for_status()
        return response.json()["data"]

    def wait_for_spans(self, project: str, count: int) -> list[dict[str, Any]]:
        """Phoenix inserts asynchronously (200 before insert): poll until `count` spans."""
        return wait_for(
            lambda: (spans := self.spans(project)) and len(spans) >= count and spans,
            timeout=READ_TIMEOUT,
            what=f"{count} spans in Phoenix project {project}",
        )

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="session")
def phoenix() -> Iterator[PhoenixServer]:
    try:
        import phoenix.server.main  # noqa: F401
    except ImportError:
        pytest.fail("arize-phoenix is not installed: pip install -r tests/requirements-otlp.txt")
    server = PhoenixServer()
    try:
        yield server.wait_until_healthy()
    finally:
        server.stop()


def context() -> DeliveryContext:
    return DeliveryContext(
        destination_id=f"dst_{uuid.uuid4().hex[:8]}",
        owner="user:user_demo",
        now=datetime.now(UTC),
    )


def phoenix_destination(phoenix: PhoenixServer, project: str) -> PhoenixDestination:
    config = PhoenixDestination.config_schema().load(
        {"endpoint": phoenix.url, "project_name": project}
    )
    return PhoenixDestination(config, HttpTransport(NetworkPolicy(allow_private_networks=True)))


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["name"]: span for span in spans}


def new_project() -> str:
    return f"broadcast-{uuid.uuid4().hex[:10]}"


def test_connection_to_phoenix(phoenix: PhoenixServer) -> None:
    check = phoenix_destination(phoenix, new_project()).test_connection(context())
    assert check.ok, check.message


def test_deliver_into_phoenix_and_read_it_back(phoenix: PhoenixServer) -> None:
    project = new_project()
    session = f"session-{uuid.uuid4().hex[:8]}"
    trace = build_trace(
        tool_call_event(
            1,
            session_id=session,
            trace={"trace_name": "Weather flow", "span_name": "Lookup", "feature": "weather"},
        )
    )
    result = phoenix_destination(phoenix, project).deliver(trace, context())
    assert result.outcome is Outcome.DELIVERED, result.error

    spans = by_name(phoenix.wait_for_spans(project, 3))
    root, step, llm = spans["Weather flow"], spans["Lookup"], spans["chat openai/gpt-4o"]
    assert (root["span_kind"], step["span_kind"], llm["span_kind"]) == ("CHAIN", "CHAIN", "LLM")
    assert root["parent_id"] is None
    assert step["parent_id"] == root["context"]["span_id"]
    assert llm["parent_id"] == step["context"]["span_id"]
    assert len({span["context"]["trace_id"] for span in spans.values()}) == 1
    assert llm["status_code"] == "OK"
    attributes = llm["attributes"]
    assert attributes["llm.model_name"] == "openai/gpt-4o"
    assert attributes["llm.provider"] == "openai"
    assert attributes["llm.token_count.prompt"] == 1200
    assert attributes["llm.token_count.completion"] == 300
    assert attributes["llm.token_count.total"] == 1500
    assert attributes["llm.token_count.prompt_details.cache_read"] == 1000
    assert attributes["llm.token_count.completion_details.reasoning"] == 120
    assert attributes["llm.cost.total"] == pytest.approx(0.000123)
    assert attributes["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"] == (
        "get_weather"
    )
    for span in spans.values():
        assert span["attributes"]["session.id"] == session
        assert span["attributes"]["user.id"] == "end-user-7"
        assert span["attributes"]["metadata.feature"] == "weather"

    # Phoenix builds its session from the root span's session.id.
    shown = wait_for(lambda: phoenix.get(f"/v1/sessions/{session}").ok, timeout=READ_TIMEOUT)
    assert shown
    data = phoenix.get(f"/v1/sessions/{session}").json()["data"]
    assert data["session_id"] == session
    assert [t["trace_id"] for t in data["traces"]] == [root["context"]["trace_id"]]
    assert (data["token_count_prompt"], data["token_count_completion"]) == (1200, 300)


def test_grouping_error_and_privacy_in_phoenix(phoenix: PhoenixServer) -> None:
    project = new_project()
    destination, ctx = phoenix_destination(phoenix, project), context()
    grouped = {"trace_id": f"workflow-{uuid.uuid4().hex[:6]}", "trace_name": "Workflow"}
    first = build_trace(chat_event(2, trace=grouped))
    failed = build_trace(error_event(3, trace=grouped)).without_content()
    for trace in (first, failed):
        assert destination.deliver(trace, ctx).outcome is Outcome.DELIVERED

    spans = phoenix.wait_for_spans(project, 4)
    assert len({span["context"]["trace_id"] for span in spans}) == 1  # one trace, two roots
    roots = [span for span in spans if span["parent_id"] is None]
    assert [span["name"] for span in roots] == ["Workflow", "Workflow"]
    errored = [span for span in spans if span["status_code"] == "ERROR"]
    assert len(errored) == 2
    assert {span["status_message"] for span in errored} == {"Upstream provider returned 502"}
    private_llm = next(s for s in errored if s["span_kind"] == "LLM")
    assert not [
        key
        for key in private_llm["attributes"]
        if key.startswith(("input.", "output.", "llm.input_messages", "llm.output_messages"))
    ]
    assert private_llm["attributes"]["llm.token_count.prompt"] == 21
    assert any(event["name"] == "exception" for event in private_llm["events"])


def test_redelivery_is_deduplicated_by_span_id(phoenix: PhoenixServer) -> None:
    project = new_project()
    destination, ctx = phoenix_destination(phoenix, project), context()
    trace = build_trace(chat_event(4))
    for _ in range(2):  # a retry after a lost response re-sends the same span ids
        assert destination.deliver(trace, ctx).outcome is Outcome.DELIVERED
    marker = build_trace(chat_event(5, trace={"trace_name": "Marker"}))
    assert destination.deliver(marker, ctx).outcome is Outcome.DELIVERED
    spans = wait_for(
        lambda: (found := phoenix.spans(project)) and "Marker" in by_name(found) and found,
        timeout=READ_TIMEOUT,
    )
    assert len(spans) == 4  # 2 for the trace (once), 2 for the marker


@pytest.mark.integration
def test_broadcast_delay_into_phoenix(
    phoenix: PhoenixServer, worker: Any, service: Any, user_id: str
) -> None:
    """The whole pipeline: gateway `.delay()` → fan_out → deliver → Phoenix."""
    from tasks import broadcast

    project = new_project()
    service.add_destination(
        f"user:{user_id}",
        "phoenix",
        "Phoenix e2e",
        {"endpoint": phoenix.url, "project_name": project},
    )
    session = f"session-{uuid.uuid4().hex[:8]}"
    event = chat_event(
        6,
        id=f"gen-{uuid.uuid4().hex[:12]}",
        user_id=user_id,
        session_id=session,
        trace={"trace_name": "Pipeline", "span_name": "Step"},
    )
    broadcast.delay(event)

    spans = by_name(phoenix.wait_for_spans(project, 3))
    root, step, llm = spans["Pipeline"], spans["Step"], spans["chat openai/gpt-4o"]
    assert (root["span_kind"], step["span_kind"], llm["span_kind"]) == ("CHAIN", "CHAIN", "LLM")
    assert step["parent_id"] == root["context"]["span_id"]
    assert llm["parent_id"] == step["context"]["span_id"]
    assert llm["attributes"]["llm.model_name"] == "openai/gpt-4o"
    assert llm["attributes"]["llm.token_count.prompt"] == 21
    assert llm["attributes"]["llm.token_count.completion"] == 7
    assert llm["attributes"]["session.id"] == session
    assert llm["attributes"]["user.id"] == "end-user-7"
    assert llm["attributes"]["llm.output_messages.0.message.content"] == "The answer is 12."
    # Previews: Phoenix's trace list shows the root's input and output.
    for chain in (root, step):
        assert chain["attributes"]["input.value"] == "What is 6 + 6?"
        assert chain["attributes"]["output.value"] == "The answer is 12."
    # The gateway's billed cost, as an attribute Phoenix keeps on the span.
    assert llm["attributes"]["llm.cost.total"] == 0.000123
