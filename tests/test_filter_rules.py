"""Filter rules: validation errors, every operator on every field type, how groups combine,
their place in eligibility, and a hostile regex."""

from __future__ import annotations

import time
from typing import Any

import pytest

from broadcast_engine.eligibility import Decision, decide
from broadcast_engine.events import build_trace
from harness.samples import chat_event
from settings.filter_rules import (
    FIELDS,
    NUMBER_FIELDS,
    NUMBER_OPERATORS,
    STRING_FIELDS,
    STRING_OPERATORS,
    FilterRulesError,
    compile_rules,
    validate,
)
from settings.models import Circuit, DestinationRecord, Health, HealthRecord, Route

# chat_event(1): model openai/gpt-4o, provider OpenAI, session session-0, user end-user-7,
# finish stop, 21 + 7 = 28 tokens, cost 0.000123.
TRACE = build_trace(chat_event(1))


def rules(*groups: tuple[str, list[tuple[str, str, Any]]], enabled: bool = True) -> dict:
    return {
        "enabled": enabled,
        "groups": [
            {"logic": logic, "rules": [{"field": f, "operator": o, "value": v} for f, o, v in rs]}
            for logic, rs in groups
        ],
    }


def matches(field: str, operator: str, value: Any, trace=TRACE) -> bool:
    compiled = compile_rules(rules(("and", [(field, operator, value)])))
    assert compiled is not None
    return compiled.matches(trace)


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("equals", "openai/gpt-4o", True),
        ("equals", "openai/gpt-4", False),
        ("equals", "OPENAI/GPT-4O", False),  # case-sensitive
        ("not_equals", "openai/gpt-4o", False),
        ("not_equals", "anthropic/claude", True),
        ("contains", "gpt", True),
        ("contains", "claude", False),
        ("not_contains", "gpt", False),
        ("not_contains", "claude", True),
        ("starts_with", "openai/", True),
        ("starts_with", "gpt", False),
        ("ends_with", "-4o", True),
        ("ends_with", "openai", False),
        ("regex", r"^openai/gpt-\d", True),
        ("regex", r"(?i)GPT-4O$", True),
        ("regex", r"^anthropic/", False),
        ("exists", None, True),
        ("not_exists", None, False),
    ],
)
def test_string_operators(operator, value, expected):
    assert matches("model", operator, value) is expected


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    [
        ("total_tokens", "equals", 28, True),
        ("total_tokens", "equals", 27, False),
        ("total_tokens", "not_equals", 28, False),
        ("total_tokens", "not_equals", 27, True),
        ("total_tokens", "gt", 27, True),
        ("total_tokens", "gt", 28, False),
        ("total_tokens", "gte", 28, True),
        ("total_tokens", "gte", 29, False),
        ("total_tokens", "lt", 29, True),
        ("total_tokens", "lt", 28, False),
        ("total_tokens", "lte", 28, True),
        ("total_tokens", "lte", 27, False),
        ("total_cost", "gt", 0.0001, True),
        ("total_cost", "lt", 0.0001, False),
        ("total_cost", "equals", 0.000123, True),
        ("prompt_tokens", "equals", 21, True),
        ("completion_tokens", "lte", 7, True),
        ("total_cost", "exists", None, True),
        ("total_cost", "not_exists", None, False),
    ],
)
def test_number_operators(field, operator, value, expected):
    assert matches(field, operator, value) is expected


# A field the trace does not have matches only the negative operators.
ABSENT = {op: op in ("not_exists", "not_equals", "not_contains") for op in STRING_OPERATORS}


@pytest.mark.parametrize("operator", STRING_OPERATORS)
def test_absent_string_field(operator):
    trace = build_trace(chat_event(1, session_id=None))
    value = None if operator in ("exists", "not_exists") else "session"
    assert matches("session_id", operator, value, trace) is ABSENT[operator]


@pytest.mark.parametrize("operator", NUMBER_OPERATORS)
def test_absent_number_field(operator):
    trace = build_trace(chat_event(1, cost={}))
    assert trace.cost.total is None
    value = None if operator in ("exists", "not_exists") else 0
    expected = operator in ("not_exists", "not_equals")
    assert matches("total_cost", operator, value, trace) is expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "openai/gpt-4o"),
        ("provider", "OpenAI"),
        ("session_id", "session-0"),
        ("user_id", "end-user-7"),
        ("finish_reason", "stop"),
        ("input", "You are a terse assistant.\nWhat is 1 + 1?"),
        ("output", "The answer is 2."),
        ("total_cost", 0.000123),
        ("total_tokens", 28),
        ("prompt_tokens", 21),
        ("completion_tokens", 7),
    ],
)
def test_each_field_reads_the_trace(field, value):
    assert matches(field, "equals", value)
    assert not matches(field, "not_equals", value)


def test_api_key_name():
    named = build_trace(chat_event(1, api_key_name="Production"))
    assert matches("api_key_name", "equals", "Production", named)
    assert matches("api_key_name", "starts_with", "Prod", named)
    assert not matches("api_key_name", "not_exists", None, named)
    keyless = build_trace(chat_event(1, api_key_id=None, api_key_name=None))
    assert matches("api_key_name", "not_exists", None, keyless)
    assert not matches("api_key_name", "equals", "Production", keyless)


def test_every_field_and_operator_is_covered():
    assert set(FIELDS) == set(STRING_FIELDS) | set(NUMBER_FIELDS)
    assert "regex" in STRING_OPERATORS and "regex" not in NUMBER_OPERATORS
    assert "gt" in NUMBER_OPERATORS and "gt" not in STRING_OPERATORS


GPT = ("model", "starts_with", "openai/")
CLAUDE = ("model", "starts_with", "anthropic/")
CHEAP = ("total_cost", "lt", 0.01)
DEAR = ("total_cost", "gt", 0.01)


@pytest.mark.parametrize(
    ("groups", "enabled", "expected"),
    [
        ([("and", [GPT, CHEAP])], True, True),
        ([("and", [GPT, DEAR])], True, False),  # and: every rule
        ([("or", [CLAUDE, CHEAP])], True, True),  # or: one rule is enough
        ([("or", [CLAUDE, DEAR])], True, False),
        ([("or", [GPT]), ("or", [CHEAP])], True, True),  # groups: every group
        ([("or", [GPT]), ("or", [DEAR])], True, False),
        ([("or", [CLAUDE, GPT]), ("and", [CHEAP])], True, True),
        ([("and", [CLAUDE])], False, True),  # disabled rules forward everything
        ([], True, True),  # no groups forward everything
    ],
)
def test_how_rules_and_groups_combine(groups, enabled, expected):
    compiled = compile_rules(rules(*groups, enabled=enabled))
    assert (compiled is None or compiled.matches(TRACE)) is expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "filterRules must be an object or null"),
        ({"enabled": "yes"}, "filterRules.enabled must be true or false"),
        ({"groups": {}}, "filterRules.groups must be a list"),
        ({"colour": 1}, "filterRules.colour: unknown key"),
        ({"groups": [{"logic": "xor", "rules": []}]}, "filterRules.groups[0].logic must be"),
        ({"groups": [{"rules": []}]}, "filterRules.groups[0].rules must contain at least one"),
        (
            rules(("and", [("colour", "equals", "red")])),
            "filterRules.groups[0].rules[0].field: unknown field 'colour'",
        ),
        (
            rules(("and", [GPT, ("model", "like", "x")])),
            "filterRules.groups[0].rules[1].operator: unknown operator 'like'",
        ),
        (
            rules(("and", [("model", "gt", 3)])),
            "rules[0].operator: 'gt' does not apply to the string field 'model'",
        ),
        (
            rules(("and", [("total_cost", "regex", "1.*")])),
            "rules[0].operator: 'regex' does not apply to the number field 'total_cost'",
        ),
        (
            rules(("and", [("total_tokens", "gt", "10")])),
            "rules[0].value must be a finite number for 'total_tokens'",
        ),
        (
            rules(("and", [("total_tokens", "gt", True)])),
            "rules[0].value must be a finite number",
        ),
        (
            rules(("and", [("total_tokens", "gt", float("inf"))])),
            "rules[0].value must be a finite number",
        ),
        (rules(("and", [("model", "equals", 4)])), "rules[0].value must be a string for 'model'"),
        (rules(("and", [("model", "exists", "x")])), "rules[0].value: 'exists' takes no value"),
        (
            rules(("and", [("input", "regex", "(unclosed")])),
            "filterRules.groups[0].rules[0].value: not a valid RE2 regex (missing )",
        ),
        (
            rules(("and", [("input", "regex", r"(a)\1")])),  # backreferences: not linear
            "rules[0].value: not a valid RE2 regex (invalid escape sequence",
        ),
        (rules(("and", [("model", "equals", "x" * 1001)])), "at most 1000 characters"),
    ],
)
def test_validation_names_the_problem(raw, message):
    with pytest.raises(FilterRulesError) as caught:
        validate(raw)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_validation_normalises():
    assert validate(None) is None and validate({}) is None
    assert validate({"groups": [{"rules": [{"field": "model", "operator": "exists"}]}]}) == {
        "enabled": True,
        "groups": [
            {"logic": "and", "rules": [{"field": "model", "operator": "exists", "value": None}]}
        ],
    }


def test_a_catastrophic_regex_runs_in_linear_time():
    # `(a+)+$` on "aaaa…b" takes exponential time on a backtracking engine (Python's `re`
    # would not finish); RE2 scans the text once.
    answer = {"role": "assistant", "content": "a" * 100_000 + "b"}
    hostile = build_trace(
        chat_event(1, response={"choices": [{"message": answer, "finish_reason": "stop"}]})
    )
    compiled = compile_rules(
        rules(("or", [("output", "regex", "(a+)+$"), ("output", "regex", "^(a|aa)*c$")]))
    )
    assert compiled is not None
    started = time.perf_counter()
    for _ in range(10):
        assert compiled.matches(hostile) is False
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"10 evaluations took {elapsed:.3f}s"


def route(**overrides: Any) -> Route:
    values: dict[str, Any] = dict(
        id="dst_1",
        type="webhook",
        enabled=True,
        health=Health.HEALTHY,
        circuit=Circuit.CLOSED,
        api_keys=frozenset(),
        exclude_api_keys=frozenset(),
        sampling_rate=1.0,
    )
    values.update(overrides)
    return Route(**values)


def test_rules_come_after_the_key_filter_and_before_sampling():
    only_claude = rules(("and", [CLAUDE]))
    assert decide(route(filter_rules=only_claude), TRACE) is Decision.FILTERED_BY_RULE
    assert decide(route(filter_rules=rules(("and", [GPT]))), TRACE) is Decision.ELIGIBLE
    assert decide(route(filter_rules=only_claude, api_keys=frozenset({"other"})), TRACE) is (
        Decision.FILTERED_BY_KEY
    )
    # The tiniest rate samples almost everything out, but the rule decides first.
    assert decide(route(filter_rules=only_claude, sampling_rate=0.0001), TRACE) is (
        Decision.FILTERED_BY_RULE
    )
    assert decide(route(filter_rules=only_claude, health=Health.AUTH_FAILED), TRACE) is (
        Decision.FILTERED_BY_RULE
    )
    assert Decision.FILTERED_BY_RULE.value == "filtered_by_rule"


def test_routes_compile_their_rules_once():
    r = route(filter_rules=rules(("and", [GPT])))
    assert r.rule_filter is r.rule_filter
    assert route().rule_filter is None
    hash(r)  # routes stay hashable with a dict of rules


def test_route_from_record():
    record = DestinationRecord(
        id="dst_9",
        owner="user:u1",
        type="webhook",
        name="n",
        config={},
        sealed_secrets="",
        api_keys=("k1",),
        exclude_api_keys=("k2",),
        sampling_rate=0.5,
        enabled=False,
        filter_rules=rules(("or", [GPT])),
    )
    health = HealthRecord(status=Health.AUTH_FAILED, circuit=Circuit.OPEN)
    assert Route.from_record(record, health) == route(
        id="dst_9",
        enabled=False,
        health=Health.AUTH_FAILED,
        circuit=Circuit.OPEN,
        api_keys=frozenset({"k1"}),
        exclude_api_keys=frozenset({"k2"}),
        sampling_rate=0.5,
        filter_rules=rules(("or", [GPT])),
    )


def test_records_saved_without_rules_still_load():
    legacy = (
        '{"id": "dst_1", "owner": "user:u1", "type": "webhook", "name": "n", "config": {},'
        ' "sealed_secrets": "", "api_keys": [], "exclude_api_keys": [], "sampling_rate": 1.0,'
        ' "privacy": false, "enabled": true, "created_at": "", "updated_at": ""}'
    )
    record = DestinationRecord.from_json(legacy)
    assert record.filter_rules is None
    assert DestinationRecord.from_json(record.to_json()) == record
