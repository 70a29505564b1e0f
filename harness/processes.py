"""Start and stop real local processes: redis-server, Celery workers and beat, moto."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from broadcast_broker.topology import use_broker
from harness.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManagedProcess:
    """A child process with its output in a log file; stopped (then killed) on `stop()`."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        # A session (process group) of its own, so `kill_hard` reaches a prefork
        # worker's children too.
        self.process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_hard(self) -> None:
        """`kill -9` the process and every child it forked: nothing gets to clean up."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def redis_answers(client: redis.Redis) -> bool:
    """True when the server answers a PING (False while it is not up yet)."""
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class RedisServer:
    """A throwaway redis-server on a free loopback port, AOF on, in a temporary directory.

    `name` keeps two servers of one test apart (their data directories and logs).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        name: str = "redis",
        extra_args: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.name = name
        self.workdir = workdir
        data = workdir / name
        data.mkdir(parents=True, exist_ok=True)
        self.argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "yes",
            *extra_args,
        ]
        self.start()

    def start(self) -> None:
        self.process = ManagedProcess(self.name, self.argv, os.environ, self.workdir)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: redis_answers(client), timeout=15, what="redis-server to answer")

    def restart(self) -> None:
        """Stop (its AOF flushed) and start again on the same port and data."""
        self.stop()
        self.start()

    def stop(self) -> None:
        self.process.stop()

    def kill_hard(self) -> None:
        """`kill -9`: no shutdown, no final AOF rewrite (what survives is what was synced)."""
        self.process.kill_hard()


def celery_worker(
    env: Mapping[str, str],
    workdir: Path,
    *,
    name: str = "worker",
    queues: str = "broadcast.fanout,broadcast.deliver,broadcast.maintenance",
    concurrency: int = 8,
    pool: str = "threads",
    include: str | None = None,
    loglevel: str = "INFO",
) -> ManagedProcess:
    """A real worker; returns once it answers a ping. `include`: extra task modules."""
    hostname = f"{name}-{os.getpid()}@%h"
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queues]
    argv += ["-P", pool, "-c", str(concurrency), "-n", hostname, "-l", loglevel]
    argv += ["--without-gossip", "--without-mingle"]
    if include:
        argv += ["--include", include]
    process = ManagedProcess(name, argv, env, workdir)
    client = control_client(env.get("BROADCAST_BROKER_URL"))

    def answered() -> bool:
        if not process.alive():
            raise RuntimeError(f"worker exited:\n{process.log_tail()}")
        try:
            replies = client.control.ping(timeout=0.5) or []
        except (OSError, OperationalError, redis.ConnectionError):
            return False  # the broker just restarted (the chaos run): ask again
        return any(hostname.split("@")[0] in next(iter(reply)) for reply in replies)

    wait_for(answered, timeout=60, what="the Celery worker to answer a ping")
    return process


@functools.cache
def control_client(broker_url: str | None) -> Celery:
    """A Celery client on `broker_url` (default: the environment's), for pings and control."""
    client = Celery("broadcast-harness", set_as_current=False)
    client.config_from_object("celeryconfig")
    if broker_url:
        use_broker(client.conf, broker_url)
    return client


def celery_beat(env: Mapping[str, str], workdir: Path) -> ManagedProcess:
    return ManagedProcess(
        "beat",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "beat",
            "-l",
            "INFO",
            "-s",
            str(workdir / "beat-schedule"),
        ],
        env,
        workdir,
    )


class MotoServer:
    """moto's S3-compatible server on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            os.environ,
            workdir,
        )
        import requests

        def up() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"moto exited:\n{self.process.log_tail()}")
            try:
                return requests.get(self.url + "/moto-api/", timeout=1).status_code < 500
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=60, what="moto server")

    def stop(self) -> None:
        self.process.stop()


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
