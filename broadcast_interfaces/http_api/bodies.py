"""Request bodies of the management HTTP API, as pydantic models (they make the OpenAPI
document). Field names follow OpenRouter's observability destinations API (camelCase).

Only shape is checked here; meaning (a vendor's config, filter-rule operators against field
types, regexes, limits) is checked by `SettingsService`, whose errors name the field too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
)

from destinations.registry import known_types
from settings.filter_rules import FIELDS, LOGICS, MAX_GROUPS, MAX_RULES_PER_GROUP, OPERATORS

KeyId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
KeyList = Annotated[list[KeyId], Field(max_length=1000)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
SamplingRate = Annotated[float, Field(ge=0.0001, le=1.0)]


class _Body(BaseModel):
    # Unknown fields are refused (a misspelt `samplingrate` must not be silently ignored).
    model_config = ConfigDict(extra="forbid")


class FilterRule(_Body):
    field: Literal[FIELDS]  # type: ignore[valid-type]
    operator: Literal[OPERATORS]  # type: ignore[valid-type]
    value: StrictStr | StrictInt | StrictFloat | None = None


class FilterGroup(_Body):
    logic: Literal[LOGICS] = "and"  # type: ignore[valid-type]
    rules: Annotated[list[FilterRule], Field(min_length=1, max_length=MAX_RULES_PER_GROUP)]


class FilterRules(_Body):
    """A trace is forwarded when every group matches; `logic` joins a group's rules."""

    enabled: StrictBool = True
    groups: Annotated[list[FilterGroup], Field(max_length=MAX_GROUPS)] = []


def _at_least_one(keys: list[str] | None) -> list[str] | None:
    if keys is not None and not keys:
        raise ValueError("must contain at least one API key id (null means every key)")
    return keys


# The types in the OpenAPI document; the service checks the type (its error lists them).
DestinationType = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    Field(description="a destination type (GET /types)", json_schema_extra={"enum": known_types()}),
]


class DestinationCreate(_Body):
    name: Name
    type: DestinationType
    config: dict[str, Any]
    enabled: StrictBool = True
    apiKeys: KeyList | None = Field(
        default=None, description="include list; null = every key and keyless requests"
    )
    excludedApiKeys: KeyList | None = Field(default=None, description="wins over apiKeys")
    filterRules: FilterRules | None = None
    samplingRate: SamplingRate = 1.0
    privacyMode: StrictBool = False

    _check_keys = field_validator("apiKeys")(_at_least_one)


class DestinationUpdate(_Body):
    """Omitted fields keep their value; `config` is merged into the stored one and a masked
    secret sent back keeps the stored secret; `apiKeys: null` admits every key again and
    `filterRules: null` removes the rules."""

    name: Name | None = None
    enabled: StrictBool | None = None
    config: dict[str, Any] | None = None
    apiKeys: KeyList | None = None
    excludedApiKeys: KeyList | None = None
    filterRules: FilterRules | None = None
    samplingRate: SamplingRate | None = None
    privacyMode: StrictBool | None = None

    _check_keys = field_validator("apiKeys")(_at_least_one)


class OwnerUpdate(_Body):
    enabled: StrictBool


class Replay(_Body):
    """Which dead letters to send again: by id (`ids` and `requestIds` each take request
    ids and dead-letter ids), and/or a time window (unix seconds or ISO 8601); nothing
    given = all of them. `again`: also the requests whose replay was delivered."""

    ids: Annotated[list[KeyId], Field(max_length=1000)] | None = None
    requestIds: Annotated[list[KeyId], Field(max_length=1000)] | None = None
    again: StrictBool = False
    since: StrictStr | StrictFloat | StrictInt | None = None
    until: StrictStr | StrictFloat | StrictInt | None = None
