"""Redis's "not now" answers become BackendUnavailable, by cause, in ``RedisConnection.run``.

Provoked for real on a private redis-server (``CONFIG SET`` there disturbs no one): out of
memory under noeviction, too few replicas for min-replicas-to-write, a replica (READONLY, and
MASTERDOWN once it may not serve stale data), a script running past the busy threshold (BUSY),
a server gone. LOADING and MISCONF need a data set being loaded or a failed snapshot: those
replies are parsed by redis-py's own parser, as from the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ResponseError

from chatd.backends.redis_backends import RedisCache, RedisConnection, RedisLock, outage_of
from chatd.errors import BackendUnavailable
from tests.servers import PrivateRedis, free_port, running

pytestmark = pytest.mark.real


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    async with running(PrivateRedis(tmp_path)) as private:
        yield private


@pytest.fixture
async def admin(server: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def connection(server: PrivateRedis) -> AsyncIterator[RedisConnection]:
    opened = RedisConnection(server.url, prefix="chatd_t:")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def unavailable(action: Callable[[], Awaitable[Any]]) -> BackendUnavailable:
    with pytest.raises(BackendUnavailable) as raised:
        await action()
    assert raised.value.backend == "redis"
    return raised.value


async def test_out_of_memory_under_noeviction_is_oom(admin: aioredis.Redis, connection: RedisConnection) -> None:
    cache, lock = RedisCache(connection), RedisLock(connection)
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", 1)
    assert (await unavailable(lambda: cache.set("k", b"v", 60))).cause == "oom"
    pipeline = connection.client.pipeline(transaction=False).set("a", b"1").set("b", b"2")
    assert (await unavailable(lambda: connection.run(pipeline.execute()))).cause == "oom"  # a pipeline
    assert (await unavailable(lambda: lock.acquire("reconciler", "me", 30))).cause == "oom"  # a script
    assert await cache.get("k") is None  # reads go on
    await admin.config_set("maxmemory", 0)
    await cache.set("k", b"v", 60)
    assert await cache.get("k") == b"v"


async def test_too_few_replicas_is_no_replicas(admin: aioredis.Redis, connection: RedisConnection) -> None:
    cache = RedisCache(connection)
    await admin.config_set("min-replicas-to-write", 1)
    assert (await unavailable(lambda: cache.set("k", b"v", 60))).cause == "no_replicas"
    await admin.config_set("min-replicas-to-write", 0)
    await cache.set("k", b"v", 60)


async def test_a_replica_is_read_only_and_without_its_primary_master_down(
    admin: aioredis.Redis, connection: RedisConnection
) -> None:
    # What chatd meets when a failover made its Redis a replica: a primary nobody listens on here.
    cache = RedisCache(connection)
    await admin.execute_command("REPLICAOF", "127.0.0.1", free_port())
    try:
        assert (await unavailable(lambda: cache.set("k", b"v", 60))).cause == "read_only"
        await admin.config_set("replica-serve-stale-data", "no")
        assert (await unavailable(lambda: cache.get("k"))).cause == "master_down"
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
    await cache.set("k", b"v", 60)


async def test_a_long_script_is_busy(server: PrivateRedis, admin: aioredis.Redis, connection: RedisConnection) -> None:
    cache = RedisCache(connection)
    await admin.config_set("busy-reply-threshold", 50)
    runner = aioredis.Redis.from_url(server.url, socket_timeout=30)
    spinning = asyncio.create_task(runner.eval("while true do end", 0))
    try:
        await asyncio.sleep(0.3)  # past the threshold
        assert (await unavailable(lambda: cache.get("k"))).cause == "busy"
    finally:
        await admin.script_kill()
        with pytest.raises(ResponseError):
            await spinning
        await runner.aclose()
    assert await cache.get("k") is None


async def test_a_server_gone_is_a_connection_outage(server: PrivateRedis, connection: RedisConnection) -> None:
    await server.stop()
    assert (await unavailable(lambda: RedisCache(connection).get("k"))).cause == "connection"


@pytest.mark.parametrize(
    ("reply", "cause"),
    [
        ("LOADING Redis is loading the dataset in memory", "loading"),
        (
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
            "misconfigured_persistence",
        ),
        ("READONLY You can't write against a read only replica.", "read_only"),
        ("OOM command not allowed when used memory > 'maxmemory'.", "oom"),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", "master_down"),
        ("NOREPLICAS Not enough good replicas to write.", "no_replicas"),
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.", "busy"),
        ("ERR max number of clients reached", "connection"),
        ("BUSYGROUP Consumer Group name already exists", None),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
        ("ERR unknown command 'NOPE'", None),
    ],
)
def test_error_replies_by_cause(reply: str, cause: str | None) -> None:
    exc = BaseParser.parse_error(reply)
    outage = outage_of(exc)
    assert (outage.cause if outage else None) == cause
    # As a pipeline passes it on: the reply after "Command # n (...) of pipeline caused error: ".
    exc.status_code = None
    exc.args = (f"Command # 1 (SET k v) of pipeline caused error: {reply}",)
    if cause is not None and type(exc) is ResponseError:
        assert outage_of(exc) is not None and outage_of(exc).cause == cause  # type: ignore[union-attr]


def test_client_side_failures_by_cause() -> None:
    from redis.exceptions import BusyLoadingError, ConnectionError, DataError, TimeoutError

    assert outage_of(TimeoutError("Timeout reading from socket")).cause == "timeout"  # type: ignore[union-attr]
    assert outage_of(ConnectionError("Connection refused")).cause == "connection"  # type: ignore[union-attr]
    assert outage_of(BusyLoadingError("loading")).cause == "loading"  # type: ignore[union-attr]
    assert outage_of(ConnectionResetError()).cause == "connection"  # type: ignore[union-attr]
    assert outage_of(DataError("Invalid input of type: 'dict'")) is None
