"""Fault injection against the real servers: every acked number survives every fault.

Two api and two worker processes run under a steady load (tests.faults.load). Each test
injects one fault, heals it, stops the load, and then awaits, with a deadline, that every
number a client was given is stored exactly once, searchable, and counted
(tests.faults.verify). A killed chatd process is started again, as systemd would; the
others, and every process after a server fault, must carry on by themselves.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from chatd.settings import Settings
from tests.conftest import Namespace
from tests.faults.load import LoadClient, LoadResult
from tests.faults.verify import Verdict, verify
from tests.processes import ChatdProcess, created

pytestmark = [pytest.mark.faults, pytest.mark.real, pytest.mark.timeout(600)]

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
FAST = {"reconcile_interval_seconds": 1.0, "index_batch_wait_seconds": 0.2, "shutdown_timeout_seconds": 15.0}
LOAD_SECONDS = 3.0
# Longer than the embedded queue's lease (60 s): jobs a worker could not give back return after it.
STUCK_SECONDS = 75.0


class Cluster:
    """chatd processes of one namespace: two api and two worker processes unless ``roles`` says otherwise.

    ``overrides`` are settings of every process (a private server's URL, a proxy's); the store they
    name is migrated first, as an operator runs `chatd migrate`.
    """

    def __init__(
        self,
        namespace: Namespace,
        tmp_path: Path,
        *,
        roles: tuple[str, ...] = ("api", "api", "worker", "worker"),
        **overrides: object,
    ):
        self.namespace = namespace
        self.tmp_path = tmp_path
        self.roles = roles
        self.overrides = overrides
        self.processes: list[ChatdProcess] = []

    async def settings(self) -> Settings:
        if self.namespace.backend_set == "real":
            store = {"database_url": self.overrides["database_url"]} if "database_url" in self.overrides else {}
            await self.namespace.open_backends(**store)  # migrates, as `chatd migrate` would
        return await self.namespace.settings(**{**FAST, **self.overrides})

    async def start(self) -> None:
        settings = await self.settings()
        self.processes = [ChatdProcess(settings, role, self.tmp_path) for role in self.roles]
        await asyncio.gather(*(process.start() for process in self.processes))

    def first(self, role: str) -> ChatdProcess:
        return next(p for p in self.processes if p.role == role)

    @property
    def api_urls(self) -> list[str]:
        return [p.url for p in self.processes if p.role == "api"]

    async def replace(self, process: ChatdProcess) -> None:
        """Start a process like ``process`` in its place (what systemd's Restart= does)."""
        fresh = ChatdProcess.like(process)
        self.processes[self.processes.index(process)] = fresh
        await fresh.start()

    def all_alive(self) -> bool:
        return all(p.process is not None and p.process.poll() is None for p in self.processes)

    def print_logs(self, characters: int = 3000) -> None:
        """The end of every process's log, on stdout."""
        for process in self.processes:
            log = process.log_path.read_text(errors="replace") if process.log_path.exists() else "(no log)"
            print(f"\n--- {process.role} log, last {characters} characters ---\n{log[-characters:]}")

    def stop(self) -> None:
        for process in self.processes:
            process.stop_quietly()


async def services(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SERVICES), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0, f"services.sh {' '.join(args)} failed:\n{output.decode()[-3000:]}"


async def kill_worker(cluster: Cluster) -> None:
    worker = cluster.first("worker")
    worker.kill()
    await cluster.replace(worker)


async def kill_api(cluster: Cluster) -> None:
    api = cluster.first("api")
    api.kill()
    await cluster.replace(api)


async def restart_rabbitmq(cluster: Cluster) -> None:
    await services("restart-one", "rabbitmq")


async def wipe_redis(cluster: Cluster) -> None:
    # Redis runs without persistence here: a restart comes back empty, as a failover to an
    # empty replica would. The sentinel proves it did.
    import redis.asyncio as aioredis

    from tests.conftest import REDIS_URL

    async with aioredis.from_url(REDIS_URL) as client:
        await client.set("chatd-fault-sentinel", b"1")
    await services("restart-one", "redis")
    async with aioredis.from_url(REDIS_URL) as client:
        assert await client.exists("chatd-fault-sentinel") == 0, "redis kept its data"


async def pause_elasticsearch(cluster: Cluster) -> None:
    await services("stop-one", "elasticsearch")
    await asyncio.sleep(20)  # the outage itself, not a wait for a condition
    await services("start-one", "elasticsearch")


async def restart_mariadb(cluster: Cluster) -> None:
    await services("restart-one", "mariadb")


async def sigterm(role: str, cluster: Cluster) -> None:
    process = cluster.first(role)
    exit_code = await process.terminate(timeout=FAST["shutdown_timeout_seconds"] + 15)
    assert exit_code == 0, f"{role} exited {exit_code} on SIGTERM:\n{process.log_path.read_text()[-3000:]}"
    await cluster.replace(process)


async def sigterm_api(cluster: Cluster) -> None:
    await sigterm("api", cluster)


async def sigterm_worker(cluster: Cluster) -> None:
    await sigterm("worker", cluster)


FAULTS: dict[str, Callable[[Cluster], Awaitable[None]]] = {
    "kill -9 worker": kill_worker,
    "kill -9 api": kill_api,
    "restart rabbitmq": restart_rabbitmq,
    "restart redis, data wiped": wipe_redis,
    "elasticsearch down 20 s": pause_elasticsearch,
    "restart mariadb": restart_mariadb,
    "sigterm api": sigterm_api,
    "sigterm worker": sigterm_worker,
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault(fault: str, tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    await survive(fault, Cluster(Namespace("real", tmp_path), tmp_path), FAULTS[fault], record_fault)


async def survive(  # type: ignore[no-untyped-def]
    name: str,
    cluster: Cluster,
    fault: Callable[[Cluster], Awaitable[None]],
    record_fault,
    *,
    database: str | None = None,
    load_started: Callable[[Cluster, LoadClient], Awaitable[None]] | None = None,
) -> Verdict:
    """Start ``cluster``, load it through ``fault`` and assert the verdict; record it whatever happens.

    ``database``: where the stored rows are read (default: the namespace's database on the shared
    MariaDB; a ``mysql://`` URL or a ``sqlite:///`` file otherwise). ``load_started``: what to do
    once the load runs, before the fault (wait for a replica to catch up, say). Stops the cluster
    and removes the namespace on the way out.
    """
    verdict: Verdict | None = None
    retried = 0
    try:
        await cluster.start()
        load = await start_load(cluster)
        if load_started is not None:
            await load_started(cluster, load)
        result = await through_fault(cluster, load, fault)
        retried = failed_requests(result)
        verdict = await converged(database or cluster.namespace.name, cluster, load.token, result)  # type: ignore[attr-defined]
        assert cluster.all_alive(), "a chatd process died and nobody restarted it"
        for process in cluster.processes:
            assert await process.terminate() == 0, process.log_path.read_text()[-3000:]
        assert result.slowest_failure_seconds < 30, "a request hung instead of failing fast"
        assert verdict.acked > 100, f"the load hardly ran: {result.statuses}"
        assert verdict.ok, f"{verdict.line()} ({result.statuses})"
        return verdict
    finally:
        record_fault(name, bool(verdict and verdict.ok), verdict or Verdict.none(), retried)
        if verdict is None or not verdict.ok:
            cluster.print_logs()  # pytest shows a failed test's output: what the processes said
        cluster.stop()
        await cluster.namespace.cleanup()


async def through_fault(cluster: Cluster, load: LoadClient, fault: Callable[[Cluster], Awaitable[None]]) -> LoadResult:
    """Steady load, the fault (healed), steady load again; then the load's result."""
    await asyncio.sleep(LOAD_SECONDS)  # steady load before the fault
    await fault(cluster)
    await asyncio.sleep(LOAD_SECONDS)  # and after it
    return await load.stop()


def failed_requests(result: LoadResult) -> int:
    """Requests answered with anything but 201 (the load client retried each, with the same idempotency key)."""
    return sum(n for status, n in result.statuses.items() if status != "201")


async def start_load(cluster: Cluster) -> LoadClient:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        url = cluster.api_urls[0]
        token = str((await created(session, f"{url}/applications", {"application": {"name": "faults"}}))["token"])
        chats = [int((await created(session, f"{url}/applications/{token}/chats"))["number"]) for _ in range(3)]
    load = LoadClient(cluster.api_urls, token, chats)
    load.token = token  # type: ignore[attr-defined]
    await load.start()
    return load


async def converged(database: str, cluster: Cluster, token: str, result, timeout: float = 180.0) -> Verdict:  # type: ignore[no-untyped-def]
    """Await a clean verdict; after ``timeout`` seconds, return the last one seen.

    A verdict whose stored figures have not moved for ``STUCK_SECONDS`` will not get better by
    waiting (a message overwritten by another with its number stays lost): returned at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = None, loop.time()
    while True:
        verdict = await verify(database, cluster.api_urls[-1], token, result)
        stored = (verdict.lost, verdict.duplicated, verdict.unsearchable, verdict.miscounted, verdict.missing_chats)
        if stored != last:
            last, since = stored, loop.time()
        if not any(stored) or loop.time() > deadline or loop.time() - since > STUCK_SECONDS:
            return verdict
        await asyncio.sleep(1.0)
