"""What each process costs, from /proc: resident memory (sampled) and CPU time (start to end).

CPU seconds per message, per process, is where the time of an end-to-end run goes: the api, the
workers, and on the real set the four servers (found by name; they also serve whatever else runs
on the machine meanwhile, another test run included).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
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
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        for name, (process, marker) in SERVERS.items():
            if comm == process and marker in cmdline and name not in found:
                found[name] = int(entry.name)
    return found


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
