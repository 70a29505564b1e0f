"""A throwaway 3-master Redis Cluster on loopback, for running the store on a cluster.

Three `redis-server --cluster-enabled yes` processes, each with its own client port and
cluster bus port, joined with `redis-cli --cluster create ... --cluster-replicas 0`; the
constructor polls `CLUSTER INFO` on every node until `cluster_state:ok`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import redis

from harness.processes import ManagedProcess, free_port, redis_answers
from harness.waiting import wait_for

MASTERS = 3


class RedisClusterServer:
    """`.url` is a `redis+cluster://` URL listing every node (settings.redis_client)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.ports = [free_port() for _ in range(MASTERS)]
        self.processes: list[ManagedProcess] = []
        for port in self.ports:
            data = workdir / f"cluster-{port}"
            data.mkdir(parents=True, exist_ok=True)
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                    "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-port", str(free_port()), "--cluster-node-timeout", "5000",
                    "--appendonly", "no", "--save", ""]  # fmt: skip
            self.processes.append(
                ManagedProcess(f"redis-cluster-{port}", argv, os.environ, workdir)
            )
        try:
            self._create()
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def _create(self) -> None:
        cli = shutil.which("redis-cli") or "redis-cli"
        clients = [redis.Redis(host="127.0.0.1", port=port) for port in self.ports]
        wait_for(lambda: all(redis_answers(c) for c in clients), timeout=15, what="cluster nodes")
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
            )
        wait_for(
            lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients),
            timeout=30,
            interval=0.2,
            what="cluster_state:ok on every node",
        )
        for client in clients:
            client.close()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
