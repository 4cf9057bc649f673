"""The processes under test: chatd deployments on a fresh namespace, the ceiling, and their RSS.

A deployment is one ``chatd serve --role api`` process and N ``--role worker`` processes on one
backend set, started the way tests/test_processes.py starts them (tests/processes.py), on a
namespace of their own (tests/conftest.py: a new MySQL database, Redis key prefix, RabbitMQ queue
prefix and Elasticsearch index, or new SQLite files), removed afterwards. A fresh namespace per
deployment keeps one measurement's backlog out of the next one.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import Namespace
from tests.processes import ChatdProcess, await_ready
from tests.servers import free_port


@dataclass
class Deployment:
    api: ChatdProcess
    workers: list[ChatdProcess]
    # More api processes on the first one's port (CHATD_REUSE_PORT): the kernel spreads connections.
    more_apis: list[ChatdProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.api.url

    def check_alive(self) -> None:
        """Raise if a process has exited, with its exit code and the end of its log."""
        for process in [self.api, *self.more_apis, *self.workers]:
            assert process.process is not None
            code = process.process.poll()
            if code is not None:
                log = process.log_path.read_text()[-3000:]
                raise RuntimeError(f"chatd {process.role} (pid {process.process.pid}) exited with {code}:\n{log}")

    def pids(self) -> dict[str, int]:
        pids = {"api" if not self.more_apis else "api 1": pid_of(self.api)}
        for index, api in enumerate(self.more_apis, 2):
            pids[f"api {index}"] = pid_of(api)
        for index, worker in enumerate(self.workers, 1):
            pids["worker" if len(self.workers) == 1 else f"worker {index}"] = pid_of(worker)
        return pids


def pid_of(process: ChatdProcess) -> int:
    assert process.process is not None
    return process.process.pid


@asynccontextmanager
async def deployment(backend_set: str, folder: Path, workers: int, **overrides: object) -> AsyncIterator[Deployment]:
    """``workers`` and api processes on a namespace of their own; ``overrides``: settings (the limits).

    ``apis=N`` among ``overrides`` starts N api processes on one port (``CHATD_REUSE_PORT``), not a setting.
    """
    apis = int(str(overrides.pop("apis", 1)))
    folder.mkdir(parents=True, exist_ok=True)
    space = Namespace(backend_set, folder)
    # Recognisable if a crashed run leaves it behind on the shared servers.
    space.name = "chatd_bench_" + uuid.uuid4().hex[:8]
    processes: list[ChatdProcess] = []
    try:
        if apis > 1:
            overrides["reuse_port"] = True
        settings = await space.serving_settings(**overrides)  # the real set's database created and migrated
        processes = [ChatdProcess(settings, "api", folder)]
        processes += [ChatdProcess(settings, "api", folder, port=processes[0].port) for _ in range(apis - 1)]
        processes += [ChatdProcess(settings, "worker", folder) for _ in range(workers)]
        # One after the other: on SQLite each process applies the migrations as it starts.
        for process in processes:
            await process.start()
        yield Deployment(processes[0], processes[apis:], processes[1:apis])
    finally:
        for process in processes:
            process.stop_quietly()
        await space.cleanup()


class Ceiling:
    """``python -m bench.ceiling`` on a free port (see bench/ceiling.py)."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / "ceiling.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> Ceiling:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.ceiling", "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT
            )
        await await_ready(self.process, self.url, self.log_path, "the ceiling", timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
