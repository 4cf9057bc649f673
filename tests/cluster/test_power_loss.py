"""Every RabbitMQ node killed at once (a power loss, a host rebooted): `services.sh cluster up` brings
the three back, and they serve quorum queues again.

A node that was a cluster member when it died does not open its port until it has seen its peers
(it waits for them up to 10 x 30 s), so a start that waits for each node before spawning the next
never finishes: stop 26's CI, "cluster rabbitmq c1: not answering after 120s". `cluster up` spawns
all of them, then waits.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from tests.cluster.test_node_loss import services_output

pytestmark = [pytest.mark.cluster, pytest.mark.real, pytest.mark.timeout(300)]

AMQP_URLS = [f"amqp://chatd:chatd@127.0.0.1:{port}/" for port in (5681, 5682, 5683)]


async def test_the_rabbitmq_cluster_comes_back_after_every_node_died_at_once() -> None:
    for node in ("1", "2", "3"):
        await services_output("cluster", "kill", "rabbitmq", node)

    said = await asyncio.wait_for(services_output("cluster", "up"), timeout=240)
    status = await services_output("cluster", "status")
    running = status.split("running_nodes")[1].split("\n")[0]
    assert all(f"rabbit-c{node}@localhost" in running for node in "123"), status + said
    for url in AMQP_URLS:  # every node takes a quorum queue's message and hands it back
        assert await round_trip(url) == url.encode()


async def round_trip(url: str) -> bytes:
    queue_name = f"chatd_power_loss_{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(url, timeout=10)
    async with connection, asyncio.timeout(60):
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(url.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue_name
            )
            got = await queue.get(timeout=30)
            await got.ack()
            return got.body
        finally:
            await queue.delete(if_unused=False, if_empty=False)
