"""What the management API answers, as pydantic models (they make the OpenAPI document
and FastAPI checks every answer against them). Field names and shapes are the API's
(camelCase, OpenRouter's observability destinations API); the `*_out` functions turn the
service's views into them.

Records the service passes through as it keeps them (delivery-log entries, health events,
rejected events) are objects whose fields belong to the engine; status rows name the
fields they have today and let new ones through.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broadcast_engine.dead_letters import DeadLetter
from broadcast_interfaces.wire import destination_json, letter_json

# A record written by the engine, shown as stored.
Record = dict[str, Any]


class StoredFilterRule(BaseModel):
    field: str
    operator: str
    value: str | int | float | None


class StoredFilterGroup(BaseModel):
    logic: str
    rules: list[StoredFilterRule]


class StoredFilterRules(BaseModel):
    """The destination's rules as saved (`FilterRules`, every field given)."""

    enabled: bool
    groups: list[StoredFilterGroup]


class Destination(BaseModel):
    """A destination; secret config fields are masked (`****` and their last 4 characters)."""

    id: str
    name: str
    type: str
    enabled: bool
    config: dict[str, Any]
    apiKeys: list[str] | None = Field(description="null: every key and keyless requests")
    excludedApiKeys: list[str]
    filterRules: StoredFilterRules | None
    samplingRate: float
    privacyMode: bool
    health: str
    createdAt: str
    updatedAt: str


class DestinationAnswer(BaseModel):
    data: Destination


class DestinationPage(BaseModel):
    data: list[Destination]
    totalCount: int = Field(description="every destination of the owner, not only this page")


class Deleted(BaseModel):
    deleted: bool


class ConnectionResult(BaseModel):
    ok: bool
    message: str
    statusCode: int | None = Field(description="the vendor's answer; null when none came")


class ConnectionAnswer(BaseModel):
    data: ConnectionResult


class Resumed(BaseModel):
    circuitWasOpen: bool
    circuit: str
    health: str


class ResumeAnswer(BaseModel):
    data: Resumed


class RecordList(BaseModel):
    """Records as the engine keeps them, newest first."""

    data: list[Record]


class DeadLetterOut(BaseModel):
    id: str
    requestId: str
    at: str
    reason: str
    replayedAt: str | None
    replayDeliveredAt: str | None = Field(
        description="when a replay of this request was delivered; null until one was"
    )


class DeadLetterList(BaseModel):
    data: list[DeadLetterOut]


class Replayed(BaseModel):
    sent: int = Field(description="how many requests were queued again")
    skippedDelivered: int = Field(
        description="requests whose earlier replay was delivered (sent only with `again`)"
    )
    skippedNoTrace: int = Field(description="requests whose letter kept no trace to send")
    requestIds: list[str] = Field(description="the requests sent again")
    skippedRequestIds: list[str] = Field(description="the requests skipped as delivered")


class ReplayAnswer(BaseModel):
    data: Replayed


class ConfigField(BaseModel):
    name: str
    required: bool
    secret: bool
    url: bool


class TypeDescription(BaseModel):
    type: str
    name: str
    config: list[ConfigField]


class TypeList(BaseModel):
    data: list[TypeDescription]


class TableSchema(BaseModel):
    type: str
    statement: str


class TableSchemaAnswer(BaseModel):
    data: TableSchema


class StatusRow(BaseModel):
    """One destination's state. Times are ISO 8601; "" or null when there is none."""

    model_config = ConfigDict(extra="allow")

    id: str
    owner: str
    owner_enabled: bool
    type: str
    name: str
    enabled: bool
    health: str
    health_reason: str
    checked_at: str
    counters: dict[str, int]
    owner_rejected_events: int
    last_error: str
    last_error_at: str
    circuit: str
    delivery: str
    next_attempt: str | None
    consecutive_failures: int
    next_probe: str | None
    backlog: int
    in_flight: int
    backlog_bytes: int
    oldest_waiting_since: str | None
    dead_letters: int
    next_check: str | None


class Status(BaseModel):
    owner: str
    enabled: bool
    destinations: list[StatusRow]


class StatusAnswer(BaseModel):
    data: Status


class Owner(BaseModel):
    owner: str
    enabled: bool = Field(description="false: nothing of the owner's is forwarded")


class OwnerAnswer(BaseModel):
    data: Owner


def destination_out(view: dict[str, Any]) -> dict[str, Any]:
    """`SettingsService.view` (secrets already masked) in the API's camelCase shape: the
    CLI's `--json` shape without `owner` (the key names the owner)."""
    shape = destination_json(view)
    del shape["owner"]
    return shape


def letter_out(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as the API and the CLI's `--json` show it."""
    return letter_json(letter)
