"""Filter rules (OpenRouter's `filterRules`): which traces a destination receives.

Shape: `{"enabled": bool, "groups": [{"logic": "and"|"or", "rules": [{"field", "operator",
"value"}]}]}`.

How they combine (OpenRouter leaves this open; this is our contract):

- within a group, `logic` joins the rules: `and` = every rule matches, `or` = at least one;
- groups are joined with AND: a trace is forwarded only when every group matches. Groups
  are therefore clauses ("model is X or Y" AND "cost > 0.01"), which expresses any filter;
- `enabled: false`, or no groups at all, forwards everything (the rules stay stored).

Fields and their types. `string` fields: `model`, `provider`, `session_id`, `user_id` (the
end user, the request's `user`), `api_key_name`, `finish_reason` (the first choice's),
`input` and `output` (the messages' text, joined by newlines). `number` fields:
`total_cost` (USD), `total_tokens`, `prompt_tokens`, `completion_tokens`.

Operators: on strings `equals`, `not_equals`, `contains`, `not_contains`, `starts_with`,
`ends_with`, `regex` (case-sensitive; use `(?i)` in a regex to ignore case); on numbers
`equals`, `not_equals`, `gt`, `lt`, `gte`, `lte`; on both `exists` and `not_exists`, which
take no value. A field the trace does not have matches only `not_exists`, `not_equals`
and `not_contains`.

Regexes run on RE2 (linear time in the text, no backtracking), so a hostile pattern such
as `(a+)+$` cannot stall fan-out; patterns RE2 does not support (backreferences,
lookaround) are refused on save.

`validate()` checks and normalises rules on save, raising `FilterRulesError` whose message
names the offending path (`filterRules.groups[0].rules[1].operator`); `compile_rules()`
turns validated rules into a `RuleFilter` once per routing snapshot. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import re2

from destinations.trace import Message, Trace

STRING_FIELDS: Final = (
    "model",
    "provider",
    "session_id",
    "user_id",
    "api_key_name",
    "finish_reason",
    "input",
    "output",
)
NUMBER_FIELDS: Final = ("total_cost", "total_tokens", "prompt_tokens", "completion_tokens")
FIELDS: Final = STRING_FIELDS + NUMBER_FIELDS

PRESENCE_OPERATORS: Final = ("exists", "not_exists")
STRING_OPERATORS: Final = (
    "equals",
    "not_equals",
    "contains",
    "not_contains",
    "regex",
    "starts_with",
    "ends_with",
    *PRESENCE_OPERATORS,
)
NUMBER_OPERATORS: Final = ("equals", "not_equals", "gt", "lt", "gte", "lte", *PRESENCE_OPERATORS)
OPERATORS: Final = tuple(dict.fromkeys(STRING_OPERATORS + NUMBER_OPERATORS))
LOGICS: Final = ("and", "or")
# Operators that hold when the field is absent (the trace has no such value).
_TRUE_WHEN_ABSENT: Final = frozenset({"not_exists", "not_equals", "not_contains"})

MAX_GROUPS: Final = 20
MAX_RULES_PER_GROUP: Final = 50
MAX_VALUE_LENGTH: Final = 1000
# RE2 refuses a pattern whose compiled program would need more memory than this.
REGEX_MAX_MEMORY: Final = 1 << 20

ROOT = "filterRules"


class FilterRulesError(ValueError):
    """Rules that cannot be saved; the message names the path of the problem."""


def validate(raw: Any) -> dict[str, Any] | None:
    """Check `raw` and return its normalised form, or None for "no rules".

    `None` and `{}` mean no rules. Raises `FilterRulesError`.
    """
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, Mapping):
        raise FilterRulesError(f"{ROOT} must be an object or null")
    _no_unknown_keys(raw, {"enabled", "groups"}, ROOT)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise FilterRulesError(f"{ROOT}.enabled must be true or false")
    groups = raw.get("groups", [])
    if not isinstance(groups, list):
        raise FilterRulesError(f"{ROOT}.groups must be a list")
    if len(groups) > MAX_GROUPS:
        raise FilterRulesError(f"{ROOT}.groups: at most {MAX_GROUPS} groups")
    return {
        "enabled": enabled,
        "groups": [_group(group, f"{ROOT}.groups[{i}]") for i, group in enumerate(groups)],
    }


def _group(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise FilterRulesError(f"{path} must be an object")
    _no_unknown_keys(raw, {"logic", "rules"}, path)
    logic = raw.get("logic", "and")
    if logic not in LOGICS:
        raise FilterRulesError(f"{path}.logic must be 'and' or 'or', not {logic!r}")
    rules = raw.get("rules")
    if not isinstance(rules, list) or not rules:
        raise FilterRulesError(f"{path}.rules must contain at least one rule")
    if len(rules) > MAX_RULES_PER_GROUP:
        raise FilterRulesError(f"{path}.rules: at most {MAX_RULES_PER_GROUP} rules")
    return {"logic": logic, "rules": [_rule(r, f"{path}.rules[{i}]") for i, r in enumerate(rules)]}


def _rule(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise FilterRulesError(f"{path} must be an object")
    _no_unknown_keys(raw, {"field", "operator", "value"}, path)
    field_name, operator, value = raw.get("field"), raw.get("operator"), raw.get("value")
    if field_name not in FIELDS:
        raise FilterRulesError(
            f"{path}.field: unknown field {field_name!r} (one of {', '.join(FIELDS)})"
        )
    if operator not in OPERATORS:
        raise FilterRulesError(
            f"{path}.operator: unknown operator {operator!r} (one of {', '.join(OPERATORS)})"
        )
    numeric = field_name in NUMBER_FIELDS
    allowed = NUMBER_OPERATORS if numeric else STRING_OPERATORS
    if operator not in allowed:
        kind = "number" if numeric else "string"
        raise FilterRulesError(
            f"{path}.operator: {operator!r} does not apply to the {kind} field {field_name!r} "
            f"(use one of {', '.join(allowed)})"
        )
    if operator in PRESENCE_OPERATORS:
        if value is not None:
            raise FilterRulesError(f"{path}.value: {operator!r} takes no value")
        return {"field": field_name, "operator": operator, "value": None}
    if numeric:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise FilterRulesError(f"{path}.value must be a finite number for {field_name!r}")
    else:
        if not isinstance(value, str):
            raise FilterRulesError(f"{path}.value must be a string for {field_name!r}")
        if len(value) > MAX_VALUE_LENGTH:
            raise FilterRulesError(f"{path}.value: at most {MAX_VALUE_LENGTH} characters")
        if operator == "regex":
            _compile_regex(value, f"{path}.value")
    return {"field": field_name, "operator": operator, "value": value}


def _no_unknown_keys(raw: Mapping[str, Any], known: set[str], path: str) -> None:
    unknown = sorted(str(key) for key in set(raw) - known)
    if unknown:
        raise FilterRulesError(f"{path}.{unknown[0]}: unknown key")


def _compile_regex(pattern: str, path: str) -> Any:
    options = re2.Options()
    options.max_mem = REGEX_MAX_MEMORY
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise FilterRulesError(f"{path}: not a valid RE2 regex ({detail})") from None


# Evaluation

Predicate = Callable[[Trace], bool]


@dataclass(frozen=True)
class RuleFilter:
    """Compiled rules: `matches(trace)` is true when the trace is to be forwarded."""

    groups: tuple[tuple[str, tuple[Predicate, ...]], ...]

    def matches(self, trace: Trace) -> bool:
        for logic, predicates in self.groups:
            combine = all if logic == "and" else any
            if not combine(predicate(trace) for predicate in predicates):
                return False
        return True


def compile_rules(rules: Mapping[str, Any] | None) -> RuleFilter | None:
    """Compile validated rules; None when nothing is filtered (no rules, disabled, no groups).

    Raises `FilterRulesError` for rules that do not validate (a stored record is validated
    on save, so this only happens to hand-edited data).
    """
    checked = validate(rules)
    if checked is None or not checked["enabled"] or not checked["groups"]:
        return None
    return RuleFilter(
        tuple(
            (group["logic"], tuple(_predicate(rule) for rule in group["rules"]))
            for group in checked["groups"]
        )
    )


def _predicate(rule: Mapping[str, Any]) -> Predicate:
    read = _READERS[rule["field"]]
    operator, expected = rule["operator"], rule["value"]
    test = _test(operator, expected)
    when_absent = operator in _TRUE_WHEN_ABSENT

    def predicate(trace: Trace) -> bool:
        actual = read(trace)
        if actual is None:
            return when_absent
        return test(actual)

    return predicate


def _test(operator: str, expected: Any) -> Callable[[Any], bool]:
    if operator == "regex":
        search = _compile_regex(expected, "value").search
        return lambda actual: search(actual) is not None
    tests: dict[str, Callable[[Any], bool]] = {
        "exists": lambda _actual: True,
        "not_exists": lambda _actual: False,
        "equals": lambda actual: actual == expected,
        "not_equals": lambda actual: actual != expected,
        "contains": lambda actual: expected in actual,
        "not_contains": lambda actual: expected not in actual,
        "starts_with": lambda actual: actual.startswith(expected),
        "ends_with": lambda actual: actual.endswith(expected),
        "gt": lambda actual: actual > expected,
        "lt": lambda actual: actual < expected,
        "gte": lambda actual: actual >= expected,
        "lte": lambda actual: actual <= expected,
    }
    return tests[operator]


def _text(messages: tuple[Message, ...]) -> str | None:
    parts = [message.content for message in messages if message.content]
    return "\n".join(parts) if parts else None


_READERS: dict[str, Callable[[Trace], Any]] = {
    "model": lambda t: t.model,
    "provider": lambda t: t.provider,
    "session_id": lambda t: t.session_id,
    "user_id": lambda t: t.end_user,
    "api_key_name": lambda t: t.api_key_name,
    "finish_reason": lambda t: t.finish_reasons[0] if t.finish_reasons else None,
    "input": lambda t: _text(t.input_messages),
    "output": lambda t: _text(t.output_messages),
    "total_cost": lambda t: t.cost.total,
    "total_tokens": lambda t: t.usage.total_tokens,
    "prompt_tokens": lambda t: t.usage.input_tokens,
    "completion_tokens": lambda t: t.usage.output_tokens,
}
