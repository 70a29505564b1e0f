"""`broadcast serve` as a real child process on a free loopback port."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import requests

from harness.processes import ManagedProcess, free_port
from harness.waiting import wait_for


class ApiServer:
    """The management API, started with the `broadcast` CLI in its own process."""

    def __init__(self, env: Mapping[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            "api",
            [sys.executable, "-m", "broadcast_interfaces.cli", "serve", "--port", str(self.port)],
            env,
            workdir,
        )

        def up() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"broadcast serve exited:\n{self.process.log_tail()}")
            try:
                return requests.get(self.url + "/openapi.json", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=60, what="broadcast serve to answer")

    def stop(self) -> None:
        self.process.stop()
