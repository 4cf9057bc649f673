"""Node loss under load on the local cluster: every acked number survives the kill -9 of a node.

Two api and two worker processes run under the fault suite's steady load (tests.faults.load),
each process given the cluster's servers in another order, so they lean on different nodes. Each
test kills one node with SIGKILL, as a crash would, lets the cluster (or the operator, for the
MariaDB primary) recover, starts the node again, and then awaits the fault suite's verdict:
every acked number stored once, searchable and counted, no 500, no answer past the deadline.
Besides the verdict each records how long requests were refused (503s, refused connections) and
how many searches, made all along, failed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from chatd.settings import Settings
from tests.cluster.conftest import NodeLoss
from tests.conftest import MYSQL_URL, Namespace
from tests.faults.load import LoadClient
from tests.faults.test_faults import (
    SERVICES,
    Cluster,
    converged,
    failed_requests,
    services,
    start_load,
    through_fault,
)
from tests.faults.verify import Verdict
from tests.processes import ChatdProcess, settings_env

pytestmark = [pytest.mark.cluster, pytest.mark.real, pytest.mark.timeout(600)]

REPLICA_URL = MYSQL_URL.rsplit(":", 1)[0] + ":3317"
# A search every this many seconds, all along the run.
SEARCH_EVERY = 0.25


def rotated(url: str | None, by: int) -> str | None:
    """``url`` with its list of servers rotated by ``by``: another process leans on another node first."""
    if not url or "," not in url:
        return url
    if url.startswith("redis+sentinel://"):
        hosts, _, rest = url.removeprefix("redis+sentinel://").partition("/")
        names = hosts.split(",")
        names = names[by % len(names) :] + names[: by % len(names)]
        return f"redis+sentinel://{','.join(names)}/{rest}"
    urls = url.split(",")
    return ",".join(urls[by % len(urls) :] + urls[: by % len(urls)])


class SpreadCluster(Cluster):
    """The fault suite's two api and two worker processes, each given the servers in another order."""

    async def start(self) -> None:
        settings = await self.settings()
        self.processes = [
            ChatdProcess(spread(settings, index), role, self.tmp_path) for index, role in enumerate(self.roles)
        ]
        await asyncio.gather(*(process.start() for process in self.processes))

    def heal(self) -> None:
        """Start the killed node again, as its service manager would, while the load goes on."""
        self.healing = asyncio.create_task(services("cluster", "up"))

    async def healed(self) -> None:
        """Once the killed node is back (the next test starts on a whole cluster)."""
        if getattr(self, "healing", None) is not None:
            await self.healing

    async def repoint(self, process: ChatdProcess, **changes: object) -> None:
        """Start a process like ``process``, on its port, with ``changes``, once it has stopped."""
        if process.process is not None and process.process.poll() is None:
            await process.terminate(timeout=40)
        fresh = ChatdProcess(process.settings.replace(**changes), process.role, process.log_dir, process.port)
        self.processes[self.processes.index(process)] = fresh
        await fresh.start()


def spread(settings: Settings, index: int) -> Settings:
    return settings.replace(
        amqp_url=rotated(settings.amqp_url, index),
        elasticsearch_url=rotated(settings.elasticsearch_url, index),
        redis_url=rotated(settings.redis_url, index),
    )


class Searches:
    """Searches of one chat, one every ``SEARCH_EVERY`` seconds over the api processes, counted."""

    def __init__(self, cluster: Cluster, token: str, chat: int):
        self.cluster, self.token, self.chat = cluster, token, chat
        self.made = self.failed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=6)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                urls = self.cluster.api_urls
                url = f"{urls[self.made % len(urls)]}/applications/{self.token}/chats/{self.chat}/messages/search"
                self.made += 1
                try:
                    async with session.get(url, params={"query": "fault load"}) as response:
                        self.failed += response.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    # An api process being replaced (the MariaDB promotion) refuses connections.
                    self.failed += 1
                await asyncio.sleep(SEARCH_EVERY)


async def index_green(cluster: Cluster, load: LoadClient) -> None:
    """Every shard of the namespace's index has its replica before a node is lost."""
    settings = cluster.processes[0].settings
    node = (settings.elasticsearch_url or "").split(",")[0]
    async with aiohttp.ClientSession() as session:
        url = f"{node}/_cluster/health/{settings.elasticsearch_index}"
        async with session.get(url, params={"wait_for_status": "green", "timeout": "60s"}) as response:
            health = await response.json()
    assert health.get("status") == "green", health


async def kill_rabbitmq_leader(cluster: SpreadCluster) -> None:
    leader = (await services_output("cluster", "leader", cluster.namespace.name)).strip()
    assert leader in ("1", "2", "3"), f"no leader found for the namespace's queues: {leader!r}"
    await services("cluster", "kill", "rabbitmq", leader)
    await asyncio.sleep(8)  # the broker stays dead this long: the processes on it move to another
    cluster.heal()


async def kill_redis_primary(cluster: SpreadCluster) -> None:
    await services("cluster", "kill", "redis-primary")
    await asyncio.sleep(10)  # Sentinel's down-after (5 s) and its failover
    cluster.heal()


async def kill_elasticsearch_node(cluster: SpreadCluster) -> None:
    await services("cluster", "kill", "elasticsearch", "3")
    await asyncio.sleep(8)  # searches and indexing go on on two nodes
    cluster.heal()


async def kill_mariadb_primary(cluster: SpreadCluster) -> None:
    """The README's promotion runbook, step by step, under load; the replica had everything (semi-sync)."""
    await promote_replica(cluster)


async def kill_mariadb_primary_lagged(cluster: SpreadCluster) -> None:
    """The same, with a replica that stopped replicating 5 s before: what it lacks comes from the survivors."""
    await services("cluster", "pause-replication")
    await asyncio.sleep(5)  # numbers, chats and messages the replica will never see
    await promote_replica(cluster)


async def promote_replica(cluster: SpreadCluster) -> None:
    began = time.monotonic()

    def step(name: str) -> None:
        print(f"promotion: {name} at {time.monotonic() - began:.1f} s")

    await services("cluster", "kill", "mariadb-primary")
    step("primary killed")
    await services("cluster", "promote")
    step("replica promoted")
    promoted = f"{REPLICA_URL}/{cluster.namespace.name}"
    workers = [p for p in cluster.processes if p.role == "worker"]
    for worker in workers:
        assert await worker.terminate(timeout=40) == 0, worker.log_path.read_text()[-3000:]
    step("workers stopped")
    env = settings_env(workers[0].settings.replace(database_url=promoted))
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatd", "promote", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await done.communicate()
    assert done.returncode == 0, output.decode()[-3000:]
    step("chatd promote done")
    print(output.decode()[-1000:])
    for process in [*workers, *(p for p in cluster.processes if p.role == "api")]:
        await cluster.repoint(process, database_url=promoted)
        step(f"{process.role} repointed")


class PromotedNamespace(Namespace):
    """After a promotion the old primary is dead: the pair is rebuilt before the namespace goes."""

    async def cleanup(self) -> None:
        await services("cluster", "reset-mariadb")
        self._created_database = False  # gone with the pair
        await super().cleanup()


LOSSES: dict[str, Callable[[SpreadCluster], Awaitable[None]]] = {
    "kill -9 rabbitmq queue leader": kill_rabbitmq_leader,
    "kill -9 redis primary": kill_redis_primary,
    "kill -9 elasticsearch data node": kill_elasticsearch_node,
    "kill -9 mariadb primary, replica promoted": kill_mariadb_primary,
    "kill -9 mariadb primary, lagging replica promoted": kill_mariadb_primary_lagged,
}


@pytest.mark.parametrize("loss", list(LOSSES))
async def test_node_loss(loss: str, tmp_path: Path, record_node_loss) -> None:  # type: ignore[no-untyped-def]
    promoting = loss.startswith("kill -9 mariadb")
    namespace = (PromotedNamespace if promoting else Namespace)("real", tmp_path)
    cluster = SpreadCluster(namespace, tmp_path, elasticsearch_replicas=1)
    database = f"{REPLICA_URL}/{namespace.name}" if promoting else namespace.name
    verdict: Verdict | None = None
    refused = 0.0
    searches: Searches | None = None
    try:
        await services("cluster", "up")
        await cluster.start()
        load = await start_load(cluster)
        await index_green(cluster, load)
        searches = Searches(cluster, load.token, load.chats[0])  # type: ignore[attr-defined]
        searches.start()
        result = await through_fault(cluster, load, LOSSES[loss])  # type: ignore[arg-type]
        await searches.stop()
        refused = result.failure_window_seconds
        print(f"answers: {dict(result.statuses)}; attempts {result.attempts}")
        verdict = await converged(database, cluster, load.token, result)  # type: ignore[attr-defined]
        assert cluster.all_alive(), "a chatd process died"
        for process in cluster.processes:
            assert await process.terminate(timeout=40) == 0, process.log_path.read_text()[-3000:]
        assert verdict.acked > 100, f"the load hardly ran: {result.statuses}"
        assert verdict.ok, f"{verdict.line()} ({result.statuses}, {failed_requests(result)} retried)"
        if loss.startswith("kill -9 elasticsearch"):
            assert searches.failed == 0, f"{searches.failed} of {searches.made} searches failed"
    finally:
        if searches is not None:
            await searches.stop()
        made, failed = (searches.made, searches.failed) if searches else (0, 0)
        ok = bool(verdict and verdict.ok) and (failed == 0 or not loss.startswith("kill -9 elasticsearch"))
        record_node_loss(NodeLoss(loss, ok, verdict or Verdict.none(), refused, failed, made))
        if verdict is None or not verdict.ok:
            cluster.print_logs()
        cluster.stop()
        try:
            await cluster.healed()
        finally:
            await namespace.cleanup()


async def services_output(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SERVICES), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    output, errors = await proc.communicate()
    assert proc.returncode == 0, errors.decode()[-2000:]
    return output.decode()
