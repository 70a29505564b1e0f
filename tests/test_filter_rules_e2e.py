"""Filter rules end to end: `broadcast.delay`, a real worker, real receivers."""

from __future__ import annotations

import json

import pytest

from harness.samples import chat_event
from harness.waiting import wait_for
from tasks import broadcast

pytestmark = pytest.mark.integration

# Forward OpenAI or Anthropic models, and only when the request used over 25 tokens.
RULES = {
    "enabled": True,
    "groups": [
        {
            "logic": "or",
            "rules": [
                {"field": "model", "operator": "starts_with", "value": "openai/"},
                {"field": "model", "operator": "regex", "value": "^anthropic/claude-[0-9]"},
            ],
        },
        {"logic": "and", "rules": [{"field": "total_tokens", "operator": "gt", "value": 25}]},
    ],
}


def test_only_matching_traces_are_delivered(worker, service, user_id, receiver):
    sinks = {"ruled": receiver(), "open": receiver()}
    owner = f"user:{user_id}"
    ids = {}
    for name, rules in (("ruled", RULES), ("open", None)):
        config = {"url": sinks[name].url + "/hook"}
        view = service.add_destination(owner, "webhook", name, config, filter_rules=rules)
        ids[name] = view["id"]
        sinks[name].clear()  # forget the Test Connection request

    small = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    events = {
        "gpt": {"model": "openai/gpt-4o"},
        "claude": {"model": "anthropic/claude-3-haiku"},
        "llama": {"model": "meta-llama/llama-3-8b"},  # no model rule matches
        "small-gpt": {"model": "openai/gpt-4o", "usage": small},  # the token group fails
        "claude-ish": {"model": "anthropic/claudette"},  # the regex does not match
    }
    for index, (name, overrides) in enumerate(events.items()):
        broadcast.delay(chat_event(index, user_id=user_id, id=f"{user_id}-{name}", **overrides))

    def received(name: str) -> list[str]:
        bodies = [json.loads(r.body) for r in sinks[name].requests("/hook")]
        return sorted(body["data"]["requestId"].split("-", 1)[1] for body in bodies)

    wait_for(lambda: len(received("open")) == 5, what="every trace at the open destination")
    # Fan-out counted the three it filtered out: none of them can still be on its way.
    wait_for(
        lambda: service.store.counters(ids["ruled"]).get("filtered_by_rule") == 3,
        what="three traces counted as filtered_by_rule",
    )
    wait_for(lambda: service.store.counters(ids["ruled"])["delivered"] == 2)
    assert received("ruled") == ["claude", "gpt"]
    assert service.store.counters(ids["open"]).get("filtered_by_rule", 0) == 0
    status = {row["id"]: row for row in service.status(owner)}
    assert status[ids["ruled"]]["counters"]["filtered_by_rule"] == 3
