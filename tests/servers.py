"""Private servers for the tests that stop, restart or wipe one, and free ports.

Most tests share the servers ``scripts/services.sh`` runs. A test that takes a server down runs
its own instead, on a free port with a throw-away directory, so it never disturbs anyone else
using the shared one: ``async with running(PrivateRedis(folder)) as redis: ...``. Each server
here is the same shape: a command line, a readiness probe, and start/stop that a test may
repeat (stop is a clean SIGTERM shutdown, so a restart finds what the server persisted).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def _ports_below_ephemeral() -> range:
    """Ports the kernel never picks for an outgoing connection (below its ephemeral range)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(min(20000, low // 2), low)


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on now, that this run has not handed out before.

    Not the kernel's pick (binding port 0): that comes from the ephemeral range, where any
    outgoing connection made between this probe and the server's own bind (a broker client
    reconnecting, say) may take it, and the server then fails with "address already in use".
    """
    candidates = _ports_below_ephemeral()
    for _ in range(1000):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {candidates}")


class PrivateServer:
    """A server process this test owns, on a port of its own: started, stopped and restarted at will."""

    name = "server"
    start_timeout = 60.0
    stop_timeout = 30.0

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    def prepare(self) -> None:
        """Once, before the first start: check the server is installed, make its data directory."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None  # the test's own

    def answers(self) -> bool:
        """Whether the server takes connections (the readiness probe)."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    async def start(self) -> None:
        """Start the process and wait until it answers; fail with its log if it exits or takes too long."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C of pytest reaches it through stop(), not at random
            )
        deadline = time.monotonic() + self.start_timeout
        while not await asyncio.to_thread(self.answers):
            assert self.process.poll() is None, f"private {self.name} exited:\n{self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"private {self.name} did not answer within {self.start_timeout} s"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """A clean shutdown (SIGTERM); killed if it has not stopped within ``stop_timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), self.stop_timeout)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)


Server = TypeVar("Server", bound=PrivateServer)


@asynccontextmanager
async def running(server: Server) -> AsyncIterator[Server]:
    """``server`` prepared and started; stopped on the way out, whatever the test did to it."""
    server.prepare()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class PrivateRedis(PrivateServer):
    """A redis-server without persistence: a restart loses every key, as a crash would."""

    name = "redis"
    start_timeout = 10.0
    stop_timeout = 10.0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (scripts/services.sh install)"
        port, folder = str(self.port), str(self.folder)
        return [server, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder]

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class PrivateMariadb(PrivateServer):
    """A mariadbd with a throw-away datadir, no grant tables (root without a password).

    Its folder must be one the ``mysql`` user can reach (a ``tempfile`` directory, not pytest's
    ``tmp_path``, whose parents are private to root).
    """

    name = "mariadb"
    stop_timeout = 60.0

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}"

    def prepare(self) -> None:
        if not (shutil.which("mariadbd") and shutil.which("mariadb-install-db")) or os.geteuid() != 0:
            pytest.fail("a private MariaDB needs mariadbd and mariadb-install-db, run as root")
        shutil.chown(self.folder, "mysql", "mysql")
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={self.folder}/data", "--skip-test-db"],
            check=True,
            capture_output=True,
        )

    def command(self) -> list[str]:
        return [
            "mariadbd",
            "--no-defaults",
            "--user=mysql",
            f"--datadir={self.folder}/data",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.folder}/mariadb.sock",
            "--skip-grant-tables",
            "--innodb-buffer-pool-size=32M",
            f"--log-error={self.folder}/error.log",
        ]


class PrivateRabbitmq(PrivateServer):
    """A RabbitMQ node of its own (own node name, ports and data directory)."""

    name = "rabbitmq"

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.dist_port = free_port()
        self.node = f"chatd_t_{uuid.uuid4().hex[:8]}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def prepare(self) -> None:
        if not os.path.exists(RABBITMQ_SERVER) or shutil.which("erl") is None:
            pytest.fail(f"{RABBITMQ_SERVER} is needed to run a private broker (scripts/services.sh install)")
        (self.folder / "enabled_plugins").write_text("[].")
        (self.folder / "rabbitmq-env.conf").write_text("")

    def command(self) -> list[str]:
        return [RABBITMQ_SERVER]

    def environment(self) -> dict[str, str]:
        folder = self.folder
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        }
