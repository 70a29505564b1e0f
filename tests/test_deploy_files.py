"""Dockerfile and compose.yaml, checked without a Docker engine: the compose file against
the compose-spec JSON schema, the Dockerfile with a real parser, both against the repo."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
WORKERS = {"fanout": "broadcast.fanout", "deliver": "broadcast.deliver",
           "maintenance": "broadcast.maintenance"}  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_file_is_valid_against_the_compose_spec(compose):
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_rejects_a_broken_compose_file(compose):
    """The check above can fail: a misspelt service key does not validate."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["beat"]["comand"] = broken["services"]["beat"].pop("command")
    assert not jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).is_valid(broken)


def test_compose_runs_each_pool_once_with_distinct_node_names(compose):
    services = compose["services"]
    nodes = {}
    for name, queue in WORKERS.items():
        command = services[name]["command"]
        assert command[command.index("-Q") + 1] == queue
        nodes[name] = command[command.index("-n") + 1]
        assert services[name]["healthcheck"]["test"][-1] == name
    assert len(set(nodes.values())) == len(nodes), nodes
    beats = [n for n, s in services.items() if "beat" in s.get("command", [])]
    assert beats == ["beat"] and services["beat"]["deploy"]["replicas"] == 1
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["api"]["command"][:2] == ["broadcast", "serve"]
    assert services["metrics"]["command"][:3] == ["broadcast", "metrics", "serve"]
    assert services["fanout"]["environment"]["BROADCAST_BROKER_URL"].startswith("amqp://")


def test_dockerfile_parses_and_copies_what_the_wheel_needs():
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    froms = [value for kind, value in instructions if kind == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build")
    for kind, value in instructions:
        if kind == "COPY" and not value.startswith("--from"):
            for source in shlex.split(value)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    copied = {shlex.split(v)[0] for k, v in instructions if k == "COPY"}
    packages = {p.split("*")[0] for p in _find_includes()}
    assert packages <= copied, (
        f"packages the wheel includes but the image does not copy: {packages - copied}"
    )
    final = instructions[[k for k, _ in instructions].index("FROM", 3) :]
    assert ("USER", "broadcast") in final, "the runtime stage must not run as root"
    cmd = json.loads(dict(final)["CMD"])
    assert cmd[:3] == ["celery", "-A", "tasks"]


def _find_includes() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["packages"]["find"]["include"]
