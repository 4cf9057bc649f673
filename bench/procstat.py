"""What each process costs, from /proc: resident memory (sampled) and CPU time (start to end).

CPU seconds per message, per process, is where the time of an end-to-end run goes: the api, the
workers, and on the real set the four servers (found by name; they also serve whatever else runs
on the machine meanwhile, another test run included).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# /proc/PID/comm of each server, and a word its command line must hold (java is not only ES).
SERVERS = {
    "MariaDB": ("mariadbd", "mariadbd"),
    "Redis": ("redis-server", "redis-server"),
    "RabbitMQ": ("beam.smp", "rabbit"),
    "Elasticsearch": ("java", "org.elasticsearch"),
}


def rss_mib(pid: int) -> float:
    """Resident set size (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far (0 once the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    # The command name in parentheses may hold spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def server_pids() -> dict[str, int]:
    """The pids of MariaDB, Redis, RabbitMQ and Elasticsearch on this machine (those found)."""
    found: dict[str, int] = {}
    for pid, comm, cmdline in _processes():
        for name, (process, marker) in SERVERS.items():
            cluster_node = re.search(_CLUSTER_NODES[name], cmdline)  # the local cluster's, beside them
            if comm == process and marker in cmdline and name not in found and not cluster_node:
                found[name] = pid
    return found


def _processes() -> Iterator[tuple[int, str, str]]:
    """Every process's pid, name (comm) and command line, arguments joined by spaces.

    A RabbitMQ node's (beam.smp) environment is added to its command line: its node name is there.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
            if comm == "beam.smp":
                cmdline += " " + (entry / "environ").read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:
            continue
        yield int(entry.name), comm, cmdline


def cluster_pids() -> dict[str, int]:
    """The pids of the local cluster's servers (`services.sh cluster up`), one per node.

    Told apart from the single servers by their data folders (under ``.../cluster/``), their
    ports (Redis) or their node names (RabbitMQ): ``MariaDB primary``, ``Redis 6381``,
    ``RabbitMQ c1``, ``Elasticsearch c1`` and so on.
    """
    found: dict[str, int] = {}
    for pid, comm, cmdline in _processes():
        for name, (process, word) in SERVERS.items():
            if comm == process and word in cmdline and (node := re.search(_CLUSTER_NODES[name], cmdline)):
                found[f"{name} {node.group(1)}"] = pid
    return found


# How each server's process names its node of the local cluster (and only the cluster's).
_CLUSTER_NODES = {
    "MariaDB": r"/cluster/mariadb-(primary|replica)/",
    # redis-server shows its address as its command line; the Sentinels' end in [sentinel].
    "Redis": r":(638\d)(?! *\[sentinel\])",
    "RabbitMQ": r"RABBITMQ_NODENAME=rabbit-(c\d)@",
    "Elasticsearch": r"/cluster/elasticsearch-(c\d)/",
}


@dataclass
class ProcessWatch:
    """Samples the RSS of named processes every ``interval`` seconds, and their CPU time used."""

    pids: dict[str, int]
    interval: float = 0.5
    last: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # seconds used while running()
    _cpu_start: dict[str, float] = field(default_factory=dict)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.last[name] = rss_mib(pid)
            self.peak[name] = max(self.peak.get(name, 0.0), self.last[name])

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ProcessWatch]:
        async def loop() -> None:
            while True:
                self.sample()
                await asyncio.sleep(self.interval)

        self._cpu_start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            self.sample()
            self.cpu = {name: cpu_seconds(pid) - self._cpu_start[name] for name, pid in self.pids.items()}
