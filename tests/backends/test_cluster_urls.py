"""Replicated servers from the client side: URLs that name several servers (issue 19).

Elasticsearch: a comma-separated node list, a dead node passed over. Redis: a
``redis+sentinel://`` URL, the primary followed through a failover the sentinel makes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatd.backends.amqp_queue import AmqpQueue
from chatd.backends.elasticsearch_search import ElasticsearchIndex
from chatd.backends.redis_backends import RedisCache, RedisConnection, parse_sentinel_url
from chatd.errors import BackendUnavailable
from chatd.live.redis_fanout import RedisFanout
from chatd.settings import server_urls
from tests.conftest import AMQP_URL
from tests.factories import document, eventually
from tests.servers import PrivateRabbitmq, PrivateRedis, free_port, running

pytestmark = pytest.mark.real

ELASTICSEARCH_URL = os.environ.get("CHATD_TEST_ELASTICSEARCH_URL", "http://127.0.0.1:9200")


# Elasticsearch


def test_server_urls_split_on_commas() -> None:
    assert server_urls("http://a:9200") == ["http://a:9200"]
    assert server_urls(" http://a:9200, http://b:9200 ,") == ["http://a:9200", "http://b:9200"]
    assert server_urls("amqp://a/, amqp://b/") == ["amqp://a/", "amqp://b/"]
    with pytest.raises(ValueError):
        server_urls(" , ")


async def test_a_dead_first_node_is_passed_over() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    index = ElasticsearchIndex(f"{dead},{ELASTICSEARCH_URL}", f"chatd-t-{uuid.uuid4().hex[:12]}", shards=1)
    await index.open()
    try:
        for _ in range(3):  # more than one request, so the dead node's turn comes up whatever the order
            await index.index([document(1, 1, 1, "replicated zebra"), document(1, 1, 2, "another zebra")])
            await index.refresh()
        result = await index.search(1, 1, "zebra", 1, 10)
        assert sorted(hit.message_number for hit in result.hits) == [1, 2]
    finally:
        await index.destroy()
        await index.close()


# Redis Sentinel


def test_sentinel_url_form() -> None:
    assert parse_sentinel_url("redis+sentinel://127.0.0.1:26379/chatd") == ([("127.0.0.1", 26379)], "chatd", 0)
    assert parse_sentinel_url("redis+sentinel://a:1,b:2,c/main/3") == ([("a", 1), ("b", 2), ("c", 26379)], "main", 3)
    for bad in ("redis://a:1/0", "redis+sentinel://a:1", "redis+sentinel:///x", "redis+sentinel://a:1/x/y/z"):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


class PrivateReplica(PrivateRedis):
    name = "replica"

    def __init__(self, folder: Path, primary_port: int):
        super().__init__(folder)
        self.primary_port = primary_port

    def command(self) -> list[str]:
        return [*super().command(), "--replicaof", "127.0.0.1", str(self.primary_port)]


class PrivateSentinel(PrivateRedis):
    name = "sentinel"
    service = "chatd-t"

    def __init__(self, folder: Path, primary_port: int):
        super().__init__(folder)
        self.primary_port = primary_port

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def prepare(self) -> None:
        (self.folder / "sentinel.conf").write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.folder}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
        )

    def command(self) -> list[str]:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (scripts/services.sh install)"
        return [server, str(self.folder / "sentinel.conf"), "--sentinel"]


def folder(base: Path, name: str) -> Path:
    path = base / name
    path.mkdir()
    return path


@pytest.fixture
async def sentinel_set(tmp_path: Path) -> AsyncIterator[tuple[PrivateRedis, PrivateReplica, PrivateSentinel]]:
    async with running(PrivateRedis(folder(tmp_path, "primary"))) as primary:
        async with running(PrivateReplica(folder(tmp_path, "replica"), primary.port)) as replica:
            async with running(PrivateSentinel(folder(tmp_path, "sentinel"), primary.port)) as sentinel:
                yield primary, replica, sentinel


async def test_the_cache_follows_a_failover(sentinel_set: tuple[PrivateRedis, PrivateReplica, PrivateSentinel]) -> None:
    primary, replica, sentinel = sentinel_set
    connection = RedisConnection(sentinel.url, prefix=f"chatd_t_{uuid.uuid4().hex[:12]}:")
    await connection.open()
    cache = RedisCache(connection)
    try:
        await cache.set("k", b"before", 60)
        assert await cache.get("k") == b"before"

        assert primary.process is not None
        primary.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(primary.process.wait)

        async def works_again() -> bool:
            try:
                async with asyncio.timeout(10):  # a hang fails the test, an outage is retried
                    await cache.set("k", b"after", 60)
                    return await cache.get("k") == b"after"
            except BackendUnavailable:
                return False

        await eventually(works_again, timeout=60, interval=0.2)
        _host, port = await connection.client.connection_pool.get_master_address()  # type: ignore[attr-defined]
        assert port == replica.port
    finally:
        await connection.close()


async def test_the_live_fanout_delivers_through_a_sentinel_url(
    sentinel_set: tuple[PrivateRedis, PrivateReplica, PrivateSentinel],
) -> None:
    _, _, sentinel = sentinel_set
    fanout = RedisFanout(sentinel.url, channel=f"chatd_t_{uuid.uuid4().hex[:12]}:live")
    received: list[bytes] = []
    subscribed = asyncio.Event()
    await fanout.open()
    listener = asyncio.create_task(fanout.listen(received.append, subscribed.set))
    try:
        async with asyncio.timeout(30):
            await subscribed.wait()

        async def delivered() -> bool:
            await fanout._send(b"hello")
            return b"hello" in received

        await eventually(delivered, timeout=30, interval=0.2)
    finally:
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener
        await fanout.close()


# RabbitMQ


def unique_prefix() -> str:
    return "chatd_t_" + uuid.uuid4().hex[:12]


async def test_a_dead_first_broker_is_passed_over() -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    queue = AmqpQueue(f"{dead},{AMQP_URL}", prefix=unique_prefix())
    await queue.open()
    try:
        await queue.publish("chats", [b"one"])
        deliveries = await queue.receive("chats", 10, 10.0)
        assert [delivery.body for delivery in deliveries] == [b"one"]
        await queue.ack("chats", deliveries)
    finally:
        await queue.destroy()
        await queue.close()


async def test_no_broker_answering_is_unavailable() -> None:
    dead = ",".join(f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(2))
    with pytest.raises(BackendUnavailable):
        await AmqpQueue(dead, prefix=unique_prefix()).open()


def kill(server: PrivateRabbitmq) -> None:
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)  # the script and the Erlang node it started
    server.process.wait()


async def test_losing_the_broker_in_use_moves_to_the_next(tmp_path: Path) -> None:
    async with running(PrivateRabbitmq(folder(tmp_path, "first"))) as first:
        async with running(PrivateRabbitmq(folder(tmp_path, "second"))) as second:
            queue = AmqpQueue(f"{first.url},{second.url}", prefix=unique_prefix())
            await queue.open()
            try:
                await queue.publish("chats", [b"on the first"])
                kill(first)

                async def published() -> bool:
                    try:
                        async with asyncio.timeout(15):  # a hang fails the test; an outage is retried
                            await queue.publish("chats", [b"on the second"])
                        return True
                    except BackendUnavailable:
                        return False

                started = time.monotonic()
                await eventually(published, timeout=60, interval=0.2)
                assert time.monotonic() - started < 60
                assert queue._connection is not None
                assert queue._connection.url.port == second.port
                deliveries = await queue.receive("chats", 10, 10.0)
                assert b"on the second" in [delivery.body for delivery in deliveries]
                await queue.ack("chats", deliveries)
            finally:
                await queue.close()
