"""Configuration precedence and secret encryption."""

from __future__ import annotations

import pytest

from settings.config import BroadcastConfig, ConfigurationError, load_config
from settings.crypto import SecretBox, SecretsCorrupted, generate_key


def test_precedence_explicit_then_environment_then_default():
    env = {"BROADCAST_BROKER_URL": "redis://env:1/0", "BROADCAST_READ_TIMEOUT": "7"}
    assert load_config({}).broker_url == BroadcastConfig().broker_url
    assert load_config(env).broker_url == "redis://env:1/0"
    assert load_config(env).store_url == "redis://env:1/0"  # the store follows the broker
    assert load_config(env, broker_url="redis://arg:2/0").broker_url == "redis://arg:2/0"
    assert load_config(env).read_timeout == 7.0
    both = {**env, "BROADCAST_STORE_URL": "redis://store:3/0"}
    assert load_config(both).store_url == "redis://store:3/0"


def test_invalid_values_name_the_variable():
    with pytest.raises(ConfigurationError, match="BROADCAST_READ_TIMEOUT"):
        load_config({"BROADCAST_READ_TIMEOUT": "soon"})
    with pytest.raises(ConfigurationError, match="BROADCAST_ALLOW_PRIVATE_NETWORKS"):
        load_config({"BROADCAST_ALLOW_PRIVATE_NETWORKS": "perhaps"})


def test_no_keys_is_a_start_up_error_not_plaintext():
    with pytest.raises(ConfigurationError, match="BROADCAST_ENCRYPTION_KEYS is not set"):
        SecretBox(load_config({}).encryption_keys)
    with pytest.raises(ConfigurationError, match="not a Fernet key"):
        SecretBox(["not-a-key"])


def test_seal_open_and_rotate():
    old, new = generate_key(), generate_key()
    token = SecretBox([old]).seal({"api_key": "sk-very-secret"})
    assert "sk-very-secret" not in token
    rotated_box = SecretBox([new, old])
    assert rotated_box.open(token) == {"api_key": "sk-very-secret"}
    rotated = rotated_box.rotate(token)
    assert SecretBox([new]).open(rotated) == {"api_key": "sk-very-secret"}
    with pytest.raises(SecretsCorrupted):
        SecretBox([new]).open(token)


def test_worker_refuses_to_start_without_keys(redis_server, workdir):
    """A production start without keys fails with a clear message."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "BROADCAST_ENCRYPTION_KEYS"}
    run = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo", "-l", "INFO"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "BROADCAST_ENCRYPTION_KEYS is not set" in run.stdout + run.stderr
