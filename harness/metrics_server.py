"""`broadcast metrics serve` as a real child process on a free loopback port."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import requests

from harness.processes import ManagedProcess, free_port
from harness.waiting import wait_for


class MetricsServer:
    """The metrics server, started with the `broadcast` CLI on `env`'s store and broker;
    `url` is its `/metrics`, `base` its root (`/healthz`, `/readyz`)."""

    def __init__(self, env: Mapping[str, str], workdir: Path, name: str = "metrics") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/metrics"
        argv = [sys.executable, "-m", "broadcast_interfaces.cli", "metrics", "serve"]
        self.process = ManagedProcess(name, [*argv, "--port", str(self.port)], env, workdir)

        def up() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"metrics server exited:\n{self.process.log_tail()}")
            try:
                return requests.get(f"{self.base}/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=30, what="the metrics server")

    def stop(self) -> None:
        self.process.stop()
