"""End to end into a real MLflow tracking server, a second OTLP receiver nobody on this
project wrote: `mlflow server` (SQLite) on loopback, its OTLP endpoint `/v1/traces` with
the `x-mlflow-experiment-id` header, fed by the `otel-collector` destination through
`broadcast.delay` and a real worker, read back with MLflow's own client
(`MlflowClient.search_traces`): hierarchy, span types, tokens, cost, previews, user and
session as MLflow shows them.

The server runs from its own virtualenv, `.venv-mlflow` (`make setup` builds it from
tests/mlflow-server-requirements.txt): the full `mlflow` package pins `graphql-core` below
what `arize-phoenix` needs, so the two servers cannot share one environment. The test
environment holds only MLflow's client, `mlflow-skinny` (tests/requirements-mlflow.txt).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.processes import ManagedProcess, free_port, scratch_dir
from harness.samples import tool_call_event
from harness.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
MLFLOW_BIN = REPO / ".venv-mlflow" / "bin" / "mlflow"
STARTUP_TIMEOUT = 120.0
READ_TIMEOUT = 30.0


class MlflowServer:
    """A throwaway `mlflow server` with a SQLite store in its own working directory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir = scratch_dir("broadcast-mlflow-")
        command = [
            str(MLFLOW_BIN),
            "server",
            "--backend-store-uri",
            f"sqlite:///{workdir}/mlflow.db",
            "--default-artifact-root",
            str(workdir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "true"}
        self.process = ManagedProcess("mlflow", command, env, workdir)

    def wait_until_healthy(self) -> MlflowServer:
        wait_for(self._healthy, timeout=STARTUP_TIMEOUT, interval=0.3, what="MLflow to start")
        return self

    def _healthy(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"mlflow server exited:\n{self.process.log_tail()}")
        try:
            return requests.get(f"{self.url}/health", timeout=2).ok
        except (requests.ConnectionError, requests.Timeout):  # still starting (a slow answer too)
            return False

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    if not MLFLOW_BIN.exists():
        pytest.fail(f"{MLFLOW_BIN} is missing: `make setup` builds the MLflow server's venv")
    server = MlflowServer()
    try:
        yield server.wait_until_healthy()
    finally:
        server.stop()


def traces_of(client: Any, experiment_id: str) -> list[Any]:
    """Every trace of the experiment except Test Connection's marked one."""
    traces = client.search_traces(locations=[experiment_id], max_results=50)
    return [
        trace
        for trace in traces
        if not any(span.attributes.get("broadcast.connection_test") for span in trace.data.spans)
    ]


def test_broadcast_delay_into_mlflow(
    mlflow_server: MlflowServer, worker: Any, service: Any, user_id: str
) -> None:
    """gateway `.delay()` → fan_out → deliver → MLflow's OTLP endpoint → MLflow's client."""
    from mlflow import MlflowClient

    from tasks import broadcast

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment_id = client.create_experiment(f"broadcast-{uuid.uuid4().hex[:8]}")
    view = service.add_destination(
        f"user:{user_id}",
        "otel-collector",
        "MLflow",
        {
            "endpoint": f"{mlflow_server.url}/v1/traces",
            "encoding": "protobuf",
            "headers": {"x-mlflow-experiment-id": experiment_id},
        },
    )
    assert view["id"]  # Test Connection passed against MLflow
    session = f"session-{uuid.uuid4().hex[:8]}"
    event = tool_call_event(
        3,
        id=f"gen-{uuid.uuid4().hex[:12]}",
        user_id=user_id,
        session_id=session,
        trace={"trace_name": "Weather flow", "span_name": "Lookup", "feature": "weather"},
    )
    broadcast.delay(event)

    (trace,) = wait_for(
        lambda: traces_of(client, experiment_id) or None,
        timeout=READ_TIMEOUT,
        what="the trace in MLflow",
    )
    spans = {span.name: span for span in trace.data.spans}
    root, step, chat = spans["Weather flow"], spans["Lookup"], spans["chat openai/gpt-4o"]
    # Hierarchy and span types as MLflow shows them.
    assert root.parent_id is None
    assert step.parent_id == root.span_id and chat.parent_id == step.span_id
    assert chat.span_type == "CHAT_MODEL"
    # Tokens: MLflow's own usage record, per span and for the trace.
    usage = trace.info.token_usage
    assert (usage["input_tokens"], usage["output_tokens"]) == (1200, 300)
    # Cost: MLflow prices spans from its own table unless told otherwise; the gateway's
    # billed cost travels as `broadcast.cost.*` (the GenAI conventions define no cost).
    assert chat.attributes["broadcast.cost.total"] == 0.000123
    # Previews on the root and the span; the full messages once, on the chat span.
    question = "What's the weather where this photo was taken?\n[image]"
    for preview_span in (root, step):
        (message,) = preview_span.inputs
        assert message["parts"][0]["content"] == question
    assert [message["role"] for message in chat.inputs] == ["user"]
    (answer,) = chat.outputs
    assert answer["parts"][0]["type"] == "tool_call"
    # User and session.
    assert trace.info.request_metadata.get("mlflow.trace.user") == "end-user-7"
    assert trace.info.request_metadata.get("mlflow.trace.session") == session
    assert json.loads(json.dumps(root.attributes["broadcast.metadata.feature"])) == "weather"
