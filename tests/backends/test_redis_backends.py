"""The Redis adapters against real servers: what only a real Redis shows.

Most tests use the shared server (``CHATD_TEST_REDIS_URL``) under a unique key prefix.
Tests that wipe or stop a server (FLUSHDB, SCRIPT FLUSH, restart) run their own
``redis-server`` on a free port, so they never disturb anyone else using the shared one.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chatd.backends.redis_backends import RedisCache, RedisConnection, RedisLock
from chatd.backends.registry import make_backends, opened
from chatd.errors import BackendUnavailable
from tests.conftest import embedded_settings
from tests.factories import eventually, fails_without_hanging
from tests.servers import PrivateRedis, running

pytestmark = pytest.mark.real

REDIS_URL = os.environ.get("CHATD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique_prefix() -> str:
    return f"chatd_t_{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    async with running(PrivateRedis(tmp_path)) as server:
        yield server


@pytest.fixture
async def make_connection() -> AsyncIterator[Callable[..., Awaitable[RedisConnection]]]:
    """Factory of opened connections; every one is destroyed and closed at teardown."""
    opened: list[RedisConnection] = []

    async def make(url: str = REDIS_URL, prefix: str | None = None) -> RedisConnection:
        connection = RedisConnection(url, prefix=prefix or unique_prefix())
        await connection.open()
        opened.append(connection)
        return connection

    yield make
    for connection in opened:
        try:
            await connection.destroy()
        except BackendUnavailable:
            pass  # a test pointed it at a server that is gone on purpose
        await connection.close()


async def raw_keys(connection: RedisConnection) -> set[bytes]:
    """Every key under the prefix, compared literally (a prefix may hold glob characters)."""
    prefix = connection.prefix.encode()
    return {key async for key in connection.client.scan_iter(count=1000) if key.startswith(prefix)}


# Scripts


async def test_scripts_are_reloaded_after_script_flush(private_redis: PrivateRedis, make_connection: Any) -> None:
    connection = await make_connection(private_redis.url)
    lock = RedisLock(connection)
    assert await lock.acquire("l", "me", 30)
    await connection.client.script_flush()
    await lock.release("l", "me")  # EVALSHA answered NOSCRIPT; redis-py loaded it again
    assert await lock.acquire("l", "other", 30)
    assert await raw_keys(connection) == {connection.key("lock:", "l").encode()}


# Lock


async def test_lock_is_exclusive_across_clients(make_connection: Any) -> None:
    first = await make_connection()
    second = await make_connection(prefix=first.prefix)
    one, two = RedisLock(first), RedisLock(second)
    assert await one.acquire("reconciler", "one", 30)
    assert not await two.acquire("reconciler", "two", 30)
    await two.release("reconciler", "two")  # not the owner: nothing happens
    assert await first.client.get(first.key("lock:", "reconciler")) == b"one"
    assert not await two.acquire("reconciler", "two", 30)
    await one.release("reconciler", "one")
    assert await first.client.exists(first.key("lock:", "reconciler")) == 0
    assert await two.acquire("reconciler", "two", 30)


async def test_only_one_of_many_concurrent_owners_gets_the_lock(make_connection: Any) -> None:
    first = await make_connection()
    second = await make_connection(prefix=first.prefix)
    locks = [RedisLock(first), RedisLock(second)]
    results = await asyncio.gather(*(locks[n % 2].acquire("job", f"owner-{n}", 30) for n in range(40)))
    assert results.count(True) == 1


async def test_reacquiring_extends_the_lease(make_connection: Any) -> None:
    connection = await make_connection()
    lock = RedisLock(connection)
    key = connection.key("lock:", "job")
    assert await lock.acquire("job", "one", 5)
    assert 0 < await connection.client.pttl(key) <= 5000
    assert await lock.acquire("job", "one", 60)
    assert 5000 < await connection.client.pttl(key) <= 60_000
    assert not await lock.acquire("job", "two", 600)
    assert await connection.client.pttl(key) <= 60_000  # a refused owner does not extend it


async def test_an_expired_lease_lets_another_owner_in(make_connection: Any) -> None:
    lock = RedisLock(await make_connection())
    assert await lock.acquire("job", "one", 0.2)
    assert not await lock.acquire("job", "two", 30)
    assert await eventually(lambda: lock.acquire("job", "two", 30), timeout=5, interval=0.02)
    await lock.release("job", "one")  # the old owner's late release must not free it
    assert not await lock.acquire("job", "three", 30)


# Cache


async def test_cache_entries_expire_after_their_ttl(make_connection: Any) -> None:
    connection = await make_connection()
    cache = RedisCache(connection)
    await cache.set("app:t", b"cached", 0.25)
    assert await cache.get("app:t") == b"cached"
    assert 0 < await connection.client.pttl(connection.key("cache:", "app:t")) <= 250  # milliseconds, not s

    async def gone() -> bool:
        return await cache.get("app:t") is None

    assert await eventually(gone, timeout=5, interval=0.02)


# Namespaces and lifecycle


async def test_destroy_removes_only_its_prefix_even_with_glob_characters(make_connection: Any) -> None:
    base = unique_prefix()
    mine = await make_connection(prefix=base[:-1] + "*:")
    neighbour = await make_connection(prefix=base[:-1] + "X:")  # matched by the unescaped glob
    for connection in (mine, neighbour):
        await RedisCache(connection).set("k", b"v", 30)
        await RedisLock(connection).acquire("k", "me", 30)
    await RedisCache(mine).destroy()
    assert await RedisCache(mine).get("k") is None
    assert not await RedisLock(mine).acquire("k", "other", 30)  # another port's namespace stays
    await mine.destroy()
    assert await raw_keys(mine) == set()
    assert len(await neighbour.client.keys(f"{neighbour.prefix}*")) == 2


async def test_the_registry_opens_the_shared_client_around_the_ports(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, redis_url=REDIS_URL, redis_prefix=unique_prefix())
    backends = make_backends(settings)
    connection = backends.cache.connection  # type: ignore[attr-defined]
    assert backends.lock.connection is connection  # type: ignore[attr-defined]
    assert connection in backends.connections
    async with opened(backends):
        client = connection.client
        await backends.cache.close()  # a port borrows the client: closing one leaves it to the others
        assert connection.client is client
        assert await backends.lock.acquire("job", "me", 30)
    with pytest.raises(RuntimeError):
        connection.client  # noqa: B018  # closed once, after the ports
    observer = RedisConnection(REDIS_URL, prefix=connection.prefix)
    async with observer:
        assert not await RedisLock(observer).acquire("job", "other", 30)  # the lease outlived the client
        await backends.lock.destroy()  # a closed port still cleans up, with a client of its own
        assert await raw_keys(observer) == set()


# Outages


async def assert_every_operation_is_unavailable(connection: RedisConnection) -> None:
    cache, lock = RedisCache(connection), RedisLock(connection)
    operations: list[Callable[[], Awaitable[object]]] = [
        cache.ping,
        lambda: cache.get("k"),
        lambda: cache.set("k", b"v", 1),
        lambda: cache.delete("k"),
        lambda: lock.acquire("k", "me", 1),
        lambda: lock.release("k", "me"),
        connection.destroy,
    ]
    for operation in operations:
        await fails_without_hanging(operation)


async def test_a_closed_port_is_unavailable_quickly(make_connection: Any) -> None:
    await assert_every_operation_is_unavailable(await make_connection("redis://127.0.0.1:1/0"))


async def test_a_server_that_never_answers_times_out() -> None:
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read()  # accept, read, never answer
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0?socket_timeout=0.3&socket_connect_timeout=0.3"
    connection = RedisConnection(url, prefix=unique_prefix())
    await connection.open()
    try:
        # Bounded by the URL's socket timeout, well under the default one...
        await fails_without_hanging(lambda: RedisCache(connection).get("k"), bound=2.5)
        # ...and a timeout is not retried: the command may have run, so it is not sent again.
        assert accepted == 1
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()


async def test_recovers_after_a_server_restart(private_redis: PrivateRedis, make_connection: Any) -> None:
    connection = await make_connection(private_redis.url)
    cache, lock = RedisCache(connection), RedisLock(connection)
    await cache.set("app:1", b"cached", 60)
    assert await asyncio.gather(*(cache.get("app:1") for _ in range(20)))  # fill the pool
    await private_redis.stop()
    await assert_every_operation_is_unavailable(connection)
    await private_redis.start()
    # The same client, its pooled sockets dead: it reconnects, and finds the data gone.
    assert await cache.get("app:1") is None
    assert await lock.acquire("job", "me", 30)  # scripts are loaded again on the new server


async def test_dead_pooled_connections_are_replaced_without_an_error(
    private_redis: PrivateRedis, make_connection: Any
) -> None:
    connection = await make_connection(private_redis.url)
    cache = RedisCache(connection)
    await cache.set("k", b"v", 60)
    assert await asyncio.gather(*(cache.get("k") for _ in range(20)))  # fill the pool
    await private_redis.stop()
    await private_redis.start()
    # Every pooled socket is dead; the retry on connection errors reconnects, so callers see no outage.
    assert await asyncio.gather(*(cache.get("k") for _ in range(20))) == [None] * 20
