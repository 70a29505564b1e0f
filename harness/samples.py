"""Representative finished-request events, as a gateway would send them."""

from __future__ import annotations

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
