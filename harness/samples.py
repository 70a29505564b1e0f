"""Representative finished-request events, as a gateway would send them."""

from __future__ import annotations

import base64
import functools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

BASE_TIME = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def chat_event(index: int = 0, **overrides: Any) -> dict[str, Any]:
    """A plain successful chat request; `overrides` replace top-level fields."""
    started = BASE_TIME + timedelta(seconds=index)
    event: dict[str, Any] = {
        "id": f"gen-{index:06d}",
        "user_id": "user_demo",
        "org_id": None,
        "api_key_id": "key_live_1",
        "model": "openai/gpt-4o",
        "provider": "OpenAI",
        "request": {
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": f"What is {index} + {index}?"},
            ],
            "temperature": 0.2,
            "max_tokens": 64,
        },
        "response": {
            "choices": [
                {
                    "message": {"role": "assistant", "content": f"The answer is {2 * index}."},
                    "finish_reason": "stop",
                }
            ]
        },
        "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28},
        "cost": {"total": 0.000123, "input": 0.0000525, "output": 0.0000705},
        "started_at": started.isoformat().replace("+00:00", "Z"),
        "finished_at": (started + timedelta(milliseconds=850)).isoformat().replace("+00:00", "Z"),
        "time_to_first_token_ms": 310.0,
        "user": "end-user-7",
        "session_id": f"session-{index // 3}",
        "trace": {"trace_name": "Demo", "environment": "demo", "feature": "arithmetic"},
        "status": "success",
        "streamed": True,
    }
    event.update(overrides)
    return event


def tool_call_event(index: int = 0, **overrides: Any) -> dict[str, Any]:
    """A request that offered a tool and got a tool call back, with an image in the prompt."""
    event = chat_event(index)
    event["request"] = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's the weather where this photo was taken?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": "auto",
    }
    event["response"] = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    event["usage"] = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "cached_tokens": 1000,
        "cache_write_tokens": 50,
        "reasoning_tokens": 120,
    }
    event.update(overrides)
    return event


def error_event(index: int = 0, **overrides: Any) -> dict[str, Any]:
    """A request the provider failed."""
    event = chat_event(index, response=None, status="error")
    event["error"] = {"code": 502, "message": "Upstream provider returned 502"}
    event["usage"] = {"prompt_tokens": 21, "completion_tokens": 0, "total_tokens": 21}
    event.update(overrides)
    return event


@functools.cache
def service_account_key(
    token_uri: str, email: str = "broadcast@proj-1234.iam.gserviceaccount.com"
) -> str:
    """A service-account key file (JSON text) with a fresh RSA key, for BigQuery configs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "proj-1234",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": email,
            "client_id": "1",
            "token_uri": token_uri,
        }
    )


def destination_configs(
    url: str, secret: str = "SeCrEt0123456789abcdef"
) -> dict[str, dict[str, Any]]:
    """A working config per destination type, every URL field at `url`, every credential
    distinct and containing `secret` (the Langfuse secret key is `secret` itself)."""
    basic = base64.b64encode(f"user:{secret}".encode()).decode()
    return {
        "arize": {
            "api_key": "arz_" + secret,
            "space_key": "space1",
            "model_id": "m",
            "base_url": url,
        },
        "bigquery": {
            "project_id": "proj-1234",
            "service_account_json": service_account_key(url + "/token"),
            "dataset": "openrouter",
            "endpoint": url,
        },
        "braintrust": {"api_key": "bt_" + secret, "project_id": "p1", "base_url": url},
        "clickhouse": {
            "host": url,
            "database": "default",
            "table": "OPENROUTER_TRACES",
            "username": "default",
            "password": "ch" + secret,
        },
        "datadog": {"api_key": "dd" + secret, "ml_app": "app", "url": url},
        "firehose": {
            "stream_name": "stream-1",
            "endpoint_url": url,
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "fh" + secret,
        },
        "snowflake": {
            "account": "xy12345.us-east-1",
            "token": "pat" + secret,
            "database": "DB",
            "endpoint": url,
        },
        "dynatrace": {"api_token": "dt0c01." + secret, "environment_url": url},
        "grafana": {"api_key": "glc_" + secret, "instance_id": "123456", "base_url": url},
        "langfuse": {"public_key": "pk-lf-public0123", "secret_key": secret, "base_url": url},
        "langsmith": {"api_key": "lsv2_" + secret, "endpoint": url},
        "newrelic": {"license_key": "nr" + secret, "endpoint": url + "/v1/traces"},
        "opik": {
            "api_key": "opik_" + secret,
            "workspace": "ws",
            "project_name": "p",
            "base_url": url,
        },
        "otel-collector": {
            "endpoint": url + "/v1/traces",
            "headers": {"Authorization": "Basic " + basic, "X-Token": "t" + secret},
        },
        "phoenix": {"endpoint": url, "api_key": "px" + secret},
        "posthog": {"api_key": "phc_" + secret, "endpoint": url},
        "raindrop": {"write_key": "rd" + secret, "base_url": url},
        "ramp": {"api_key": "rmp_" + secret, "base_url": url},
        "s3": {
            "bucket": "bucket-1",
            "endpoint_url": url,
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "s3" + secret,
        },
        "sentry": {
            # The endpoint must be the DSN's: same scheme, host and project.
            "otlp_endpoint": url + "/api/456/integration/otlp/v1/traces",
            "dsn": url.replace("://", f"://sn{secret}@", 1) + "/456",
        },
        "weave": {"api_key": "wb" + secret, "entity": "e", "project": "p", "base_url": url},
        "webhook": {
            "url": url + "/hook",
            "headers": {"Authorization": "Bearer wh" + secret},
            "signing_secret": "whsec_" + base64.b64encode(secret.encode().ljust(32, b"0")).decode(),
        },
    }
