"""Between chatd and each server, 300 ms of latency, then a partition: answers stay within the deadline.

Each test puts a private Toxiproxy between every chatd process and one server (MariaDB, Redis,
RabbitMQ or Elasticsearch; the other three are reached directly), runs the load of
test_faults.py, and on that proxy: 300 ms per round trip for a few seconds, a pause, then a
partition of ``PARTITION_SECONDS`` (no byte passes either way and nothing is reset: a server
that stopped answering, not one that is down), then the link back. The verdict is the one of
every fault: every acked number stored once, searchable and counted, no answer a 500, and no
request left without an answer past the deadline (tests/faults/load.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import AMQP_URL, ELASTICSEARCH_URL, MYSQL_URL, REDIS_URL, Namespace
from tests.faults.test_faults import Cluster, survive
from tests.faults.toxiproxy import Toxiproxy
from tests.servers import running

pytestmark = [pytest.mark.faults, pytest.mark.real, pytest.mark.timeout(600)]

LATENCY_MS = 300
LATENCY_SECONDS = 4.0
PARTITION_SECONDS = 12.0

# The server's shared URL, and the setting that points chatd at it.
SERVERS = {
    "mariadb": (MYSQL_URL, "database_url"),
    "redis": (REDIS_URL, "redis_url"),
    "rabbitmq": (AMQP_URL, "amqp_url"),
    "elasticsearch": (ELASTICSEARCH_URL, "elasticsearch_url"),
}


def through(url: str, port: int) -> str:
    """``url`` with its port replaced by ``port`` (the proxy's, on the same 127.0.0.1)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return parts._replace(netloc=f"{netloc}:{port}").geturl()


@pytest.mark.parametrize("server", list(SERVERS))
async def test_latency_then_partition(server: str, tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    url, setting = SERVERS[server]
    async with running(Toxiproxy(tmp_path)) as toxiproxy:
        port = await toxiproxy.create(server, urlsplit(url).port or 0)
        namespace = Namespace("real", tmp_path)
        proxied = through(url, port)
        if setting == "database_url":
            proxied = f"{proxied}/{namespace.name}"

        async def fault(cluster: Cluster) -> None:
            async with toxiproxy.latency(server, LATENCY_MS):
                await asyncio.sleep(LATENCY_SECONDS)
            await asyncio.sleep(1.0)
            async with toxiproxy.partitioned(server):
                await asyncio.sleep(PARTITION_SECONDS)

        cluster = Cluster(namespace, tmp_path, **{setting: proxied})
        name = f"{server}: {LATENCY_MS} ms latency {LATENCY_SECONDS:g} s, then partitioned {PARTITION_SECONDS:g} s"
        await survive(name, cluster, fault, record_fault)
