"""The JSON shapes of destinations and dead letters as the management HTTP API answers
them (camelCase, OpenRouter's field names), so `broadcast ... --json` prints the same
names: a script written against one reads the other."""

from __future__ import annotations

from typing import Any

from broadcast_engine.dead_letters import DeadLetter
from settings.moments import iso


def destination_json(view: dict[str, Any]) -> dict[str, Any]:
    """`SettingsService.view` (secrets already masked) as `GET .../destinations/ID` shows
    it, plus `owner` (the HTTP API knows it from the key; the CLI serves every owner)."""
    return {
        "id": view["id"],
        "owner": view["owner"],
        "name": view["name"],
        "type": view["type"],
        "enabled": view["enabled"],
        "config": view["config"],
        "apiKeys": list(view["api_keys"]) or None,
        "excludedApiKeys": list(view["exclude_api_keys"]),
        "filterRules": view.get("filter_rules"),
        "samplingRate": view["sampling_rate"],
        "privacyMode": view["privacy"],
        "health": view["health"],
        "createdAt": view["created_at"],
        "updatedAt": view["updated_at"],
    }


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as `GET .../dead-letters` shows it, with when a replay of its request
    was delivered (`replayDeliveredAt`, None until one was)."""
    return {
        "id": letter.id,
        "requestId": letter.request_id,
        "at": iso(letter.at),
        "reason": letter.reason,
        "replayedAt": iso(letter.replayed_at) if letter.replayed_at else None,
        "replayDeliveredAt": (
            iso(letter.replay_delivered_at) if letter.replay_delivered_at else None
        ),
    }
