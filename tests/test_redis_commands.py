"""settings/redis_commands.py describes redis-py's clients by hand (one cast makes a client a
`RedisClient`), so mypy cannot check the description itself: this does. Every command it
lists exists on redis-py's clients and pipelines, with parameters under the same names,
in the same order, of the same kinds."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.client import Pipeline
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script

from settings.redis_commands import RedisClient, RedisPipeline, RedisScript

# The context-manager protocol is checked by every `with client.pipeline()` at run time.
_NOT_COMMANDS = {"__enter__", "__exit__", "__call__"}


def _members(protocol: type) -> list[str]:
    return sorted(
        name
        for name, value in vars(protocol).items()
        if callable(value) and name not in _NOT_COMMANDS and not name.startswith("_")
    )


def _parameters(function: Callable[..., Any]) -> list[inspect.Parameter]:
    parameters = list(inspect.signature(function).parameters.values())
    return parameters[1:] if parameters and parameters[0].name == "self" else parameters


def _assert_matches(described: Callable[..., Any], real: Callable[..., Any]) -> None:
    kinds = {p.kind for p in _parameters(real)}
    if kinds == {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
        return  # a pass-through to the command (ClusterPipeline.echo): nothing to compare
    real_parameters = {p.name: p for p in _parameters(real)}
    # `*names` here is `*keys` in some of redis-py's clients: a star's name is not passed.
    real_star = next((p for p in _parameters(real) if p.kind == p.VAR_POSITIONAL), None)
    if real_star is not None:
        for parameter in _parameters(described):
            if parameter.kind == parameter.VAR_POSITIONAL:
                real_parameters = {
                    (parameter.name if p.kind == p.VAR_POSITIONAL else name): p
                    for name, p in real_parameters.items()
                }
    positional = [
        name
        for name, p in real_parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    described_positional = []
    for parameter in _parameters(described):
        assert parameter.name in real_parameters, f"redis-py has no parameter {parameter.name}"
        real_kind = real_parameters[parameter.name].kind
        if parameter.kind == parameter.KEYWORD_ONLY:  # listed as keyword-only: passed by name
            assert real_kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        else:
            assert parameter.kind == real_kind, parameter.name
        if parameter.default is parameter.empty:
            assert real_parameters[parameter.name].default is parameter.empty, parameter.name
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.VAR_POSITIONAL):
            described_positional.append(parameter.name)
    # Listed positional parameters are a prefix of redis-py's (defaults may be left out).
    assert positional[: len(described_positional)] == described_positional


@pytest.mark.parametrize("client_class", [redis.Redis, RedisCluster])
@pytest.mark.parametrize("name", _members(RedisClient))
def test_every_client_command_is_redis_pys(client_class: type, name: str) -> None:
    _assert_matches(getattr(RedisClient, name), getattr(client_class, name))


@pytest.mark.parametrize("pipeline_class", [Pipeline, ClusterPipeline])
@pytest.mark.parametrize("name", _members(RedisPipeline))
def test_every_pipeline_command_is_redis_pys(pipeline_class: type, name: str) -> None:
    _assert_matches(getattr(RedisPipeline, name), getattr(pipeline_class, name))


def test_a_script_is_called_as_redis_pys() -> None:
    _assert_matches(RedisScript.__call__, Script.__call__)


def test_the_check_catches_a_misnamed_parameter() -> None:
    def hget(self: object, name: str, field: str) -> None: ...

    with pytest.raises(AssertionError, match="no parameter field"):
        _assert_matches(hget, redis.Redis.hget)
