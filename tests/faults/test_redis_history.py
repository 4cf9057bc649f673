"""Redis goes back in time under load: every acked number still names one message, stored once.

The faults of issue 16 that an operator's bad day brings to Redis, each under the load and the
verdict of test_faults.py (two api and two worker processes on the real set):

- a Redis persisting by RDB snapshots killed -9 seconds after its last snapshot, restarted: it
  comes back with the keys of the snapshot, older than what chatd handed out since;
- a Redis writing an AOF (``appendfsync everysec``) killed -9, its AOF cut as a power loss leaves
  it (the last seconds gone, a command cut in the middle; ``aof-load-truncated yes``), restarted;
- chatd's keys put back, while it serves, to what they held seconds earlier (a restore of an
  older snapshot);
- a failover to a replica whose replication was cut seconds earlier: promoted with
  ``REPLICAOF NO ONE``, and chatd's Redis address (a Toxiproxy proxy) sent to it.

Every server here but the shared MariaDB, RabbitMQ and Elasticsearch is private to the test.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL, Namespace
from tests.faults.load import LoadClient
from tests.faults.test_faults import Cluster, survive
from tests.faults.toxiproxy import Toxiproxy
from tests.servers import PrivateRedis, running

pytestmark = [pytest.mark.faults, pytest.mark.real, pytest.mark.timeout(600)]

# The writes a fault takes back: this many seconds of the load's.
ROLLBACK_SECONDS = 3.0
# Marker keys of the test's, written just before and just after the state the fault goes back to.
BEFORE, AFTER = "chatd-fault:before-snapshot", "chatd-fault:after-snapshot"


class PersistentRedis(PrivateRedis):
    """A private redis-server with the persistence (or replication) options given."""

    def __init__(self, folder: Path, *options: str):
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(folder)
        self.options = list(options)

    def command(self) -> list[str]:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (scripts/services.sh install)"
        return [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), *self.options]

    def kill(self) -> None:
        """kill -9, as a crash (or the OOM killer) would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None


async def test_redis_rdb_snapshot_killed(tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    # Debian's redis.conf persists like this: RDB snapshots, no AOF.
    redis = PersistentRedis(tmp_path / "redis", "--save", "3600", "1", "--appendonly", "no", "--dbfilename", "dump.rdb")

    async def fault(cluster: Cluster) -> None:
        async with aioredis.from_url(redis.url) as client:
            await client.set(BEFORE, b"1")
            before = await client.lastsave()
            await client.bgsave()
            deadline = time.monotonic() + 30
            while await client.lastsave() == before:
                assert time.monotonic() < deadline, "BGSAVE did not finish in 30 s"
                await asyncio.sleep(0.05)
            await client.set(AFTER, b"1")
        await asyncio.sleep(ROLLBACK_SECONDS)  # the load goes on past the snapshot
        redis.kill()
        await redis.start()
        await came_back_older(redis.url)

    async with running(redis):
        namespace = Namespace("real", tmp_path)
        cluster = Cluster(namespace, tmp_path, redis_url=redis.url)
        await survive("redis killed -9 after an RDB snapshot", cluster, fault, record_fault)


async def test_redis_aof_tail_cut(tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    redis = PersistentRedis(
        tmp_path / "redis",
        *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--aof-load-truncated", "yes"),
        *("--auto-aof-rewrite-percentage", "0", "--appenddirname", "aof"),
    )

    def last_incr() -> Path:
        """The AOF file Redis appends to (Redis 7: appendonly.aof.N.incr.aof, the highest N)."""
        files = sorted((redis.folder / "aof").glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))
        assert files, f"no incremental AOF in {redis.folder / 'aof'}"
        return files[-1]

    async def fault(cluster: Cluster) -> None:
        aof = last_incr()
        async with aioredis.from_url(redis.url) as client:
            await client.set(BEFORE, b"1")  # in the file once answered (appendfsync everysec writes first)
            kept = aof.stat().st_size
            await client.set(AFTER, b"1")
        await asyncio.sleep(ROLLBACK_SECONDS)  # written by Redis, not yet on a disk that loses power
        redis.kill()
        assert aof.stat().st_size > kept + 16, "nothing was written to the AOF meanwhile"
        # What a power loss leaves: the file as it was seconds ago, plus the start of a command.
        with open(aof, "r+b") as file:
            file.truncate(kept + 7)
        await redis.start()
        await came_back_older(redis.url)

    async with running(redis):
        namespace = Namespace("real", tmp_path)
        cluster = Cluster(namespace, tmp_path, redis_url=redis.url)
        await survive("redis AOF tail cut (power loss)", cluster, fault, record_fault)


async def test_redis_rolled_back_while_serving(tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    namespace = Namespace("real", tmp_path)
    prefix = f"{namespace.name}:"  # tests.conftest.real_settings: this namespace's keys on the shared Redis

    async def fault(cluster: Cluster) -> None:
        async with aioredis.from_url(REDIS_URL) as client:
            await client.set(prefix + BEFORE, b"1")
            snapshot: dict[bytes, tuple[bytes, int]] = {}
            async for key in client.scan_iter(match=prefix + "*", count=1000):
                data, ttl = await client.pipeline(transaction=True).dump(key).pttl(key).execute()
                if data is not None:
                    snapshot[key] = (data, ttl)
            await client.set(prefix + AFTER, b"1")
            await asyncio.sleep(ROLLBACK_SECONDS)
            # Back to the snapshot: its keys as they were (with their time to live), the others gone.
            later = {key async for key in client.scan_iter(match=prefix + "*", count=1000)}
            pipe = client.pipeline(transaction=True)
            for key in later - snapshot.keys():
                pipe.delete(key)
            for key, (data, ttl) in snapshot.items():
                pipe.restore(key, max(ttl, 0), data, replace=True)
            await pipe.execute()
        await came_back_older(REDIS_URL, prefix)

    cluster = Cluster(namespace, tmp_path)
    await survive("redis rolled back 3 s while serving", cluster, fault, record_fault)


async def test_redis_failover_to_lagging_replica(tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    primary = PersistentRedis(tmp_path / "primary", "--save", "", "--appendonly", "no")
    async with running(Toxiproxy(tmp_path)) as toxiproxy, running(primary):
        # chatd reaches Redis through one proxy, the replica its primary through another: cutting
        # that one is a replica that silently stops catching up.
        chatd_port = await toxiproxy.create("redis", primary.port)
        link_port = await toxiproxy.create("replication", primary.port)
        replica = PersistentRedis(
            tmp_path / "replica", "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(link_port)
        )
        async with running(replica):

            async def caught_up(cluster: Cluster, load: LoadClient) -> None:
                await asyncio.sleep(1.0)
                await in_sync(primary, replica)

            async def fault(cluster: Cluster) -> None:
                async with aioredis.from_url(primary.url) as client:
                    await client.set(BEFORE, b"1")
                    await in_sync(primary, replica)
                    await toxiproxy.partition("replication")
                    await client.set(AFTER, b"1")
                await asyncio.sleep(ROLLBACK_SECONDS)  # the primary takes writes the replica never sees
                async with aioredis.from_url(replica.url) as client:
                    await client.execute_command("REPLICAOF", "NO", "ONE")
                await came_back_older(replica.url)
                await toxiproxy.set_upstream("redis", replica.port)  # the failover: chatd now reaches the replica

            namespace = Namespace("real", tmp_path)
            cluster = Cluster(namespace, tmp_path, redis_url=f"redis://127.0.0.1:{chatd_port}/0")
            await survive(
                "redis failover to a replica 3 s behind", cluster, fault, record_fault, load_started=caught_up
            )


async def came_back_older(url: str, prefix: str = "") -> None:
    """Redis at ``url`` holds what it held before the fault's snapshot, not what came after: older, not empty.

    (chatd may keep nothing in Redis that outlives a request: the markers, written before and
    after the snapshot, prove the fault happened as meant.)
    """
    async with aioredis.from_url(url) as client:
        assert await client.exists(prefix + BEFORE) == 1, "Redis came back empty, not older"
        assert await client.exists(prefix + AFTER) == 0, "Redis kept a write made after the snapshot"


async def in_sync(primary: PrivateRedis, replica: PrivateRedis, timeout: float = 30.0) -> None:
    """Wait until the replica's link is up and it has applied everything the primary had a moment ago."""
    deadline = time.monotonic() + timeout
    async with aioredis.from_url(primary.url) as p, aioredis.from_url(replica.url) as r:
        target = (await p.info("replication"))["master_repl_offset"]
        while True:
            info = await r.info("replication")
            if info.get("master_link_status") == "up" and info.get("slave_repl_offset", -1) >= target:
                return
            assert time.monotonic() < deadline, f"the replica did not catch up in {timeout} s: {info}"
            await asyncio.sleep(0.1)
