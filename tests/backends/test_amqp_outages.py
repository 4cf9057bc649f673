"""RabbitMQ's "not now" errors become BackendUnavailable, by cause, in the queue adapter.

On the test broker: a broker nobody listens on, an adapter whose connection is closed, a queue
deleted under a publisher (the broker returns the message). The connection and channel closed
families are aiormq's exceptions as its reader makes them from a close frame, passed through the
adapter's own bound on every round trip (``_bounded``), where requests meet them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelAccessRefused,
    ChannelClosed,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ConnectionClosed,
    DeliveryError,
)
from pamqp.commands import Basic

from chatd.backends.amqp_queue import AmqpQueue, outage_cause
from chatd.errors import BackendUnavailable
from tests.conftest import AMQP_URL
from tests.servers import free_port

pytestmark = pytest.mark.real


@pytest.fixture
async def queue() -> AsyncIterator[AmqpQueue]:
    opened = AmqpQueue(AMQP_URL, prefix="chatd_t_" + uuid.uuid4().hex[:12])
    await opened.open()
    try:
        yield opened
    finally:
        if opened._connection is None:
            await opened.open()
        await opened.destroy()
        await opened.close()


async def test_a_broker_nobody_listens_on_is_a_connection_outage() -> None:
    with pytest.raises(BackendUnavailable) as raised:
        await AmqpQueue(f"amqp://guest:guest@127.0.0.1:{free_port()}/").open()
    assert (raised.value.backend, raised.value.cause) == ("rabbitmq", "connection")


async def test_a_closed_connection_is_a_connection_outage(queue: AmqpQueue) -> None:
    await queue.close()
    for action in (lambda: queue.publish("messages", [b"x"]), queue.ping, lambda: queue.depth("messages")):
        with pytest.raises(BackendUnavailable) as raised:
            await action()
        assert (raised.value.backend, raised.value.cause) == ("rabbitmq", "connection")


async def test_a_queue_deleted_under_a_publisher_is_unroutable(queue: AmqpQueue) -> None:
    await queue.publish("chats", [b"first"])
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        await channel.queue_delete(f"{queue.prefix}.chats")
    with pytest.raises(BackendUnavailable) as raised:
        await queue.publish("chats", [b"returned"])
    assert (raised.value.backend, raised.value.cause) == ("rabbitmq", "unroutable")


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (
            ConnectionClosed(320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"),
            "connection",
        ),
        (AMQPConnectionError("connection refused"), "connection"),
        (ConnectionResetError(), "connection"),
        (ChannelInvalidStateError("writer is None"), "channel_closed"),
        (ChannelClosed(None, None), "channel_closed"),
        (ChannelClosed(504, "CHANNEL_ERROR - expected 'channel.open'"), "channel_closed"),
        (RuntimeError("Connection closed"), "channel_closed"),
        (TimeoutError(), "timeout"),
        (DeliveryError(None, Basic.Nack(delivery_tag=1)), "nacked"),  # the broker did not take a publish
        # A channel closed with a code of its own is an answer about the request, not an outage.
        (ChannelPreconditionFailed("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit'"), None),
        (ChannelNotFoundEntity("NOT_FOUND - no queue 'chatd.messages'"), None),
        # ...but a queue whose cluster node is down is there, on a node that does not answer.
        (
            ChannelNotFoundEntity(
                "NOT_FOUND - home node 'rabbit-c1@localhost' of durable queue 'chatd.chats.dead' in vhost '/'"
                " is down or inaccessible"
            ),
            "node_down",
        ),
        (ChannelAccessRefused("ACCESS_REFUSED"), None),
        (ValueError("a bug"), None),
    ],
)
async def test_broker_errors_by_cause(error: BaseException, cause: str | None) -> None:
    assert outage_cause(error) == cause

    async def meets_it() -> None:
        raise error

    adapter = AmqpQueue(AMQP_URL)
    if cause is None:
        with pytest.raises(type(error)):
            await adapter._bounded(meets_it())
    else:
        with pytest.raises(BackendUnavailable) as raised:
            await adapter._bounded(meets_it())
        assert (raised.value.backend, raised.value.cause, raised.value.__cause__) == ("rabbitmq", cause, error)
