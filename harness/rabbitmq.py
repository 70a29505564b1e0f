"""A throwaway RabbitMQ node on loopback, for running Broadcast's broker on AMQP.

Everything the node writes (database, logs, Erlang cookie) lives in the scratch
directory; it has its own node name, AMQP port, distribution port and epmd port, so it
neither touches nor collides with a system RabbitMQ. Start-up takes a few seconds; the
constructor polls until an AMQP connection succeeds, then creates the virtual host
Broadcast runs in, as docs/production.md says to: default queue type quorum, so a stock
client's declaration of a quorum queue is equivalent to it (docs/gateway.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from amqp.exceptions import AMQPError
from kombu import Connection
from kombu.exceptions import OperationalError

from harness.processes import ManagedProcess, free_port
from harness.waiting import wait_for

# Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user through `su`, which
# drops the environment; the real script below runs as whoever starts it.
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = SERVER.with_name("rabbitmqctl")
VHOST = "broadcast"


class RabbitMQServer:
    """`RabbitMQServer(workdir)` runs a node; `.url` is the `amqp://` URL of its `broadcast`
    vhost (default queue type quorum), `.plain_url` that of `/` (none); `.stop()`."""

    def __init__(self, workdir: Path, *, start_timeout: float = 90.0) -> None:
        binary = SERVER if SERVER.exists() else shutil.which("rabbitmq-server")
        if binary is None:
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        base = workdir / "rabbitmq"
        for part in ("mnesia", "log", "home"):
            (base / part).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        # An empty config of our own, so /etc/rabbitmq's is never read.
        (base / "rabbitmq.conf").write_text("# test node: defaults\n")
        self.port = free_port()
        self.epmd_port = free_port()
        self.node = f"broadcast-test-{os.getpid()}@localhost"
        self.plain_url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/{VHOST}"
        self.env = {
            **os.environ,
            "HOME": str(base / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        }
        self.process = ManagedProcess("rabbitmq", [str(binary)], self.env, workdir)
        wait_for(self._accepts, timeout=start_timeout, interval=0.5, what="RabbitMQ to accept")
        self.ctl("add_vhost", VHOST, "--default-queue-type", "quorum")
        self.ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")

    def ctl(self, *args: str) -> str:
        """Run `rabbitmqctl` against this node; its output. Raises when it fails."""
        binary = CTL if CTL.exists() else shutil.which("rabbitmqctl")
        if binary is None:
            raise RuntimeError("rabbitmqctl is not installed (apt-get install rabbitmq-server)")
        done = subprocess.run(
            [str(binary), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def _accepts(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"rabbitmq-server exited:\n{self.process.log_tail()}")
        try:
            with Connection(self.plain_url, connect_timeout=1) as connection:
                connection.ensure_connection(max_retries=1)
            return True
        except (OSError, OperationalError, AMQPError):  # refused, or the node still booting
            return False

    def stop(self) -> None:
        self.process.stop(timeout=30)
        self._stop_epmd()

    def _stop_epmd(self) -> None:
        """The node started an epmd daemon on our private port: stop that one only."""
        epmd = shutil.which("epmd") or next(
            (str(p) for p in Path("/usr/lib/erlang").glob("erts-*/bin/epmd")), None
        )
        if epmd is None:
            return
        try:
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                env=self.env,
                capture_output=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
