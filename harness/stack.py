"""A whole local Broadcast on loopback: Redis, optionally moto, a worker and beat.

Used by the demo and the benchmark. The environment is set before `tasks` is imported,
so this process's `broadcast.delay()` goes to the same throwaway Redis as the worker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import (
    ManagedProcess,
    MotoServer,
    RedisServer,
    celery_beat,
    celery_worker,
    scratch_dir,
)

KEY_FILE = Path(".broadcast") / "demo.key"


@dataclass
class Stack:
    workdir: Path
    redis: RedisServer
    env: dict[str, str]
    moto: MotoServer | None = None
    processes: list[ManagedProcess] = field(default_factory=list)


def local_key() -> str:
    """The demo's encryption key, generated once into .broadcast/demo.key (never committed)."""
    from settings.crypto import generate_key

    if not KEY_FILE.exists():
        KEY_FILE.parent.mkdir(exist_ok=True)
        KEY_FILE.write_text(generate_key())
        KEY_FILE.chmod(0o600)
    return KEY_FILE.read_text().strip()


@contextmanager
def local_stack(
    *,
    with_moto: bool = False,
    with_beat: bool = True,
    worker_concurrency: int | None = 8,
    extra_env: Mapping[str, str] | None = None,
    worker_args: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """Start everything, yield, then stop everything (and delete the scratch directory)."""
    workdir = scratch_dir("broadcast-local-")
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        redis_server = RedisServer(workdir)
        cleanup.callback(redis_server.stop)
        env = {
            "BROADCAST_BROKER_URL": redis_server.url,
            "BROADCAST_STORE_URL": redis_server.url,
            "BROADCAST_ENCRYPTION_KEYS": local_key(),
            "BROADCAST_ALLOW_PRIVATE_NETWORKS": "1",
            **(extra_env or {}),
        }
        os.environ.update(env)
        stack = Stack(workdir=workdir, redis=redis_server, env=env)
        if with_moto:
            stack.moto = MotoServer(workdir)
            cleanup.callback(stack.moto.stop)
        worker = celery_worker(
            os.environ, workdir, concurrency=worker_concurrency, **(worker_args or {})
        )
        cleanup.callback(worker.stop)
        stack.processes.append(worker)
        if with_beat:
            beat = celery_beat(os.environ, workdir)
            cleanup.callback(beat.stop)
            stack.processes.append(beat)
        yield stack
