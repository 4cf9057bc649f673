"""AmqpQueue against a real RabbitMQ: what only a real broker shows.

Every test uses its own queue prefix on the shared broker (``CHATD_TEST_AMQP_URL``) and
deletes its queues at teardown. The broker-restart test runs a private RabbitMQ node on free
ports instead, so that bouncing it never disturbs anyone else using the shared one.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from chatd.backends import amqp_batches
from chatd.backends.amqp_queue import CONFIRM_TIMEOUT, AmqpQueue
from chatd.errors import BackendUnavailable
from chatd.ports import Delivery
from tests.factories import eventually, fails_without_hanging
from tests.servers import PrivateRabbitmq, free_port, running

pytestmark = pytest.mark.real

AMQP_URL = os.environ.get("CHATD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class QueueNamespace:
    """Queues under one fresh prefix: opens adapters, inspects the broker, cleans up."""

    def __init__(self, url: str = AMQP_URL):
        self.url = url
        self.prefix = "chatd_t_" + uuid.uuid4().hex[:12]
        self._opened: list[AmqpQueue] = []

    async def open(self, **options: Any) -> AmqpQueue:
        queue = AmqpQueue(self.url, prefix=self.prefix, **options)
        await queue.open()
        self._opened.append(queue)
        return queue

    @asynccontextmanager
    async def channel(self) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        """A channel on a connection of its own, to look at the broker from outside."""
        connection = await aio_pika.connect(self.url)
        try:
            yield await connection.channel()
        finally:
            await connection.close()

    async def message_count(self, name: str) -> int:
        """Ready messages in ``{prefix}.{name}``."""
        async with self.channel() as channel:
            declared = await channel.declare_queue(f"{self.prefix}.{name}", passive=True)
            return int(declared.declaration_result.message_count or 0)

    async def delete_queue(self, name: str) -> None:
        async with self.channel() as channel:
            await channel.queue_delete(f"{self.prefix}.{name}")

    async def get_one(self, name: str) -> aio_pika.abc.AbstractIncomingMessage | None:
        async with self.channel() as channel:
            queue = await channel.declare_queue(f"{self.prefix}.{name}", passive=True)
            return await queue.get(no_ack=True, fail=False)

    async def cleanup(self) -> None:
        for queue in self._opened:
            await queue.close()
        cleaner = AmqpQueue(self.url, prefix=self.prefix)
        await cleaner.open()
        try:
            await cleaner.destroy()
        finally:
            await cleaner.close()


@pytest.fixture
async def space() -> AsyncIterator[QueueNamespace]:
    namespace = QueueNamespace()
    try:
        yield namespace
    finally:
        await namespace.cleanup()


async def receive_all(
    queue: AmqpQueue, topic: str, count: int, max_batch: int = 50, timeout: float = 20.0
) -> list[Delivery]:
    """Receive until ``count`` jobs arrived, checking every batch respects ``max_batch``."""
    received: list[Delivery] = []

    async def more() -> bool:
        batch = await queue.receive(topic, max_batch, 0.2)
        assert len(batch) <= max_batch
        received.extend(batch)
        return len(received) >= count

    await eventually(more, timeout=timeout, interval=0)
    return received


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return sorted(delivery.body for delivery in deliveries)


async def test_round_trip_then_nothing_is_left(space: QueueNamespace) -> None:
    queue = await space.open()
    jobs = [f"job {n}".encode() for n in range(50)]
    await queue.publish("messages", jobs)
    received = await receive_all(queue, "messages", 50, max_batch=20)
    assert bodies(received) == sorted(jobs)
    assert all(delivery.attempts == 1 for delivery in received)
    await queue.ack("messages", received)
    assert await queue.receive("messages", 10, 0.3) == []
    assert await queue.depth("messages") == 0


async def test_publish_returns_once_the_broker_holds_every_job(space: QueueNamespace) -> None:
    queue = await space.open()
    await queue.publish("index", [b"x%d" % n for n in range(300)])
    # Confirmed means queued: no waiting for the count to catch up. The jobs travel in
    # envelopes of at most 256; depth counts jobs all the same.
    assert await space.message_count("index") == 2
    assert await queue.depth("index") == 300
    # A process that saw none of those messages can only count each as one job.
    assert await (await space.open()).depth("index") == 2


async def test_unacked_jobs_come_back_after_their_consumer_disconnects(space: QueueNamespace) -> None:
    worker = await space.open()
    await worker.publish("chats", [b"one", b"two", b"three"])
    held = await receive_all(worker, "chats", 3)
    assert [delivery.attempts for delivery in held] == [1, 1, 1]
    await worker.close()  # the worker goes away holding all three, unacked

    other = await space.open()
    again = await receive_all(other, "chats", 3)
    assert bodies(again) == [b"one", b"three", b"two"]
    assert [delivery.attempts for delivery in again] == [2, 2, 2]
    await other.ack("chats", again)
    assert await other.depth("chats") == 0


async def test_settling_on_a_lost_channel_is_harmless_and_the_job_returns(
    space: QueueNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    worker = await space.open()
    await worker.publish("messages", [b"a", b"b", b"c", b"d"])
    held = await receive_all(worker, "messages", 1, max_batch=1)
    # Cut the AMQP connection under the robust wrapper: what a network failure does.
    transport = worker._connection.transport  # type: ignore[union-attr]
    assert transport is not None
    await transport.connection.close()

    await worker.ack("messages", held)  # its channel is gone: logged, not raised
    await worker.retry("messages", held)
    await worker.dead_letter("messages", held)
    # The connection heals by itself; the stale prefetched jobs are dropped, and the broker
    # delivers everything again, the job we held with one more attempt.
    again = await receive_all(worker, "messages", 4, timeout=30)
    assert bodies(again) == [b"a", b"b", b"c", b"d"]
    assert {d.body: d.attempts for d in again}[held[0].body] == 2
    # The envelope came back returned and was split, although the channel it is split through
    # may be restored after the consumer's.
    assert "could not split" not in caplog.text
    await worker.ack("messages", again)
    assert await worker.receive("messages", 10, 0.3) == []
    assert await space.message_count("messages.dead") == 0


async def test_retry_waits_before_delivering_again(space: QueueNamespace) -> None:
    queue = await space.open()
    await queue.publish("messages", [b"flaky"])
    first = await receive_all(queue, "messages", 1)
    retried_at = time.monotonic()
    await queue.retry("messages", first)
    # No hot loop: the retry queue holds the job for its delay.
    assert await queue.receive("messages", 10, 0.2) == []
    second = await receive_all(queue, "messages", 1)
    assert time.monotonic() - retried_at >= 0.4
    assert [(d.body, d.attempts) for d in second] == [(b"flaky", 2)]
    await queue.retry("messages", second)
    third = await receive_all(queue, "messages", 1)
    assert [(d.body, d.attempts) for d in third] == [(b"flaky", 3)]
    await queue.ack("messages", third)
    assert await queue.receive("messages", 10, 1.0) == []
    assert await space.message_count("delayed-retries") == 0


async def test_attempts_add_up_across_crashes_and_retries(space: QueueNamespace) -> None:
    worker = await space.open()
    await worker.publish("messages", [b"job"])
    await receive_all(worker, "messages", 1)
    await worker.close()  # crash: attempt 1 lost
    worker = await space.open()
    second = await receive_all(worker, "messages", 1)
    assert second[0].attempts == 2
    await worker.retry("messages", second)
    third = await receive_all(worker, "messages", 1)
    assert third[0].attempts == 3
    await worker.ack("messages", third)


async def test_dead_letter_moves_the_job_to_the_dead_queue(space: QueueNamespace) -> None:
    queue = await space.open()
    await queue.publish("messages", [b"poison", b"fine"])
    received = await receive_all(queue, "messages", 2)
    await queue.dead_letter("messages", [d for d in received if d.body == b"poison"])
    await queue.ack("messages", [d for d in received if d.body == b"fine"])

    async def dead() -> int:
        return await space.message_count("messages.dead")

    assert await eventually(dead) == 1
    assert await queue.depth("messages") == 0
    assert await queue.receive("messages", 10, 0.5) == []
    buried = await space.get_one("messages.dead")
    assert buried is not None and buried.body == b"poison"


async def test_a_job_that_keeps_killing_its_consumer_is_dead_lettered(space: QueueNamespace) -> None:
    await (await space.open(max_attempts=3)).publish("index", [b"killer"])
    for attempt in (1, 2, 3):
        worker = await space.open(max_attempts=3)
        held = await receive_all(worker, "index", 1)
        assert held[0].attempts == attempt
        await worker.close()  # the consumer dies while handling it

    async def dead() -> int:
        return await space.message_count("index.dead")

    assert await eventually(dead) == 1
    survivor = await space.open(max_attempts=3)
    assert await survivor.receive("index", 10, 0.5) == []


async def test_jobs_survive_a_consumer_restart(space: QueueNamespace) -> None:
    await (await space.open()).publish("messages", [b"%02d" % n for n in range(20)])
    worker = await space.open()
    first = await receive_all(worker, "messages", 5, max_batch=5)
    await worker.ack("messages", first)
    await worker.close()  # it had prefetched more than it handed out: those go back

    restarted = await space.open()
    rest = await receive_all(restarted, "messages", 15)
    assert sorted(bodies(first) + bodies(rest)) == [b"%02d" % n for n in range(20)]
    await restarted.ack("messages", rest)
    assert await restarted.depth("messages") == 0


async def test_depth_counts_prefetched_jobs_until_handed_out(space: QueueNamespace) -> None:
    queue = await space.open()
    await queue.publish("chats", [b"%d" % n for n in range(10)])
    handed = await queue.receive("chats", 2, 5.0)  # the rest is prefetched into the buffer
    assert 1 <= len(handed) <= 2
    assert await queue.depth("chats") == 10 - len(handed)
    rest = await receive_all(queue, "chats", 10 - len(handed), max_batch=2)
    assert await queue.depth("chats") == 0
    await queue.ack("chats", handed + rest)


async def test_a_thousand_jobs_in_bounded_batches(space: QueueNamespace) -> None:
    queue = await space.open()
    jobs = [b"job-%04d" % n for n in range(1000)]
    await queue.publish("index", jobs)
    received: list[Delivery] = []
    while len(received) < 1000:
        batch = await queue.receive("index", 64, 5.0)
        assert 1 <= len(batch) <= 64
        await queue.ack("index", batch)
        received.extend(batch)
    assert bodies(received) == jobs

    async def drained() -> bool:
        return await queue.depth("index") == 0

    assert await eventually(drained)
    assert await queue.receive("index", 64, 0.3) == []


# -- envelopes: a publish call's jobs travel as one message ------------------------------------


def test_a_batch_is_cut_into_envelopes_within_their_bounds() -> None:
    small = [b"s" * 100] * 600
    assert [len(group) for group in amqp_batches.groups(small)] == [256, 256, 88]
    large = [b"L" * 400_000] * 5
    assert [len(group) for group in amqp_batches.groups(large)] == [2, 2, 1]
    oversized = [b"a", b"O" * (2 << 20), b"b"]
    assert [len(group) for group in amqp_batches.groups(oversized)] == [1, 1, 1]  # alone, not refused
    jobs = [b"", b"\x00\x00\x00\x01", b"xyz"]
    assert amqp_batches.unframe(amqp_batches.frame(jobs), 3) == jobs
    assert amqp_batches.unframe(amqp_batches.frame(jobs), 2) is None  # a count that does not add up
    assert amqp_batches.unframe(amqp_batches.frame(jobs)[:-1], 3) is None


async def test_an_envelopes_jobs_are_delivered_once_each_whatever_their_bytes(space: QueueNamespace) -> None:
    queue = await space.open()
    # Bytes that look like framing, empty jobs, a job larger than the rest together.
    jobs = [b"", b"\x00\x00\x00\x05hello", b"\xff" * 4, bytes(range(256)), b"x" * 70_000, b""]
    jobs += [b"job %03d" % n for n in range(94)]
    await queue.publish("messages", jobs)
    assert await space.message_count("messages") == 1
    received = await receive_all(queue, "messages", len(jobs), max_batch=64)
    assert bodies(received) == sorted(jobs)
    assert all(delivery.attempts == 1 for delivery in received)
    await queue.ack("messages", received)
    assert await queue.receive("messages", 64, 0.3) == []
    assert await queue.depth("messages") == 0

    other = await space.open()  # nothing left unacked to come back either
    assert await other.receive("messages", 64, 0.5) == []


async def test_jobs_of_one_envelope_acked_retried_and_dead_lettered_each_their_way(space: QueueNamespace) -> None:
    queue = await space.open()
    await queue.publish("messages", [b"ok-1", b"again-1", b"dead-1", b"ok-2", b"again-2", b"dead-2"])
    received = {d.body: d for d in await receive_all(queue, "messages", 6)}
    await queue.ack("messages", [received[b"ok-1"]])
    await queue.retry("messages", [received[b"again-1"], received[b"again-2"]])
    await queue.dead_letter("messages", [received[b"dead-1"]])
    await queue.ack("messages", [received[b"ok-2"]])
    await queue.dead_letter("messages", [received[b"dead-2"]])  # the last decision settles the message

    async def dead() -> int:
        return await space.message_count("messages.dead")

    assert await eventually(dead) == 2
    buried = [await space.get_one("messages.dead") for _ in range(2)]
    # One message per dead job, as a single job: what an operator reads in the dead queue.
    assert sorted(m.body for m in buried if m is not None) == [b"dead-1", b"dead-2"]
    assert all(m is not None and "x-chatd-jobs" not in (m.headers or {}) for m in buried)

    again = await receive_all(queue, "messages", 2)
    assert sorted((d.body, d.attempts) for d in again) == [(b"again-1", 2), (b"again-2", 2)]
    await queue.ack("messages", again)
    assert await queue.receive("messages", 10, 1.0) == []  # the acked ones do not come back
    assert await queue.depth("messages") == 0


async def test_an_envelope_is_handed_out_across_receives_of_smaller_batches(space: QueueNamespace) -> None:
    queue = await space.open()
    jobs = [b"%02d" % n for n in range(10)]
    await queue.publish("chats", jobs)
    batches = []
    for _ in range(4):
        batch = await queue.receive("chats", 3, 5.0)
        await queue.ack("chats", batch)  # the message is acked with its last job
        batches.append(len(batch))
    assert batches == [3, 3, 3, 1]
    assert await queue.depth("chats") == 0
    await queue.close()
    assert await (await space.open()).receive("chats", 10, 0.5) == []


async def test_jobs_of_an_envelope_not_handed_out_are_given_back_at_shutdown(space: QueueNamespace) -> None:
    worker = await space.open()
    await worker.publish("chats", [b"%02d" % n for n in range(10)])
    first = await worker.receive("chats", 4, 5.0)
    assert len(first) == 4
    await worker.ack("chats", first)
    await worker.close()  # six jobs of the envelope were never handed out

    restarted = await space.open()
    rest = await receive_all(restarted, "chats", 6)
    assert sorted(bodies(first) + bodies(rest)) == [b"%02d" % n for n in range(10)]
    assert all(delivery.attempts == 1 for delivery in rest)  # given back is no failed attempt
    await restarted.ack("chats", rest)
    assert await restarted.receive("chats", 10, 0.5) == []


async def test_a_killer_inside_an_envelope_is_dead_lettered_alone(space: QueueNamespace) -> None:
    await (await space.open(max_attempts=3)).publish("index", [b"good-1", b"killer", b"good-2"])
    worker = await space.open(max_attempts=3)
    held = await receive_all(worker, "index", 3)
    assert [d.attempts for d in held] == [1, 1, 1]
    await worker.close()  # the killer takes its consumer down with the whole envelope in hand

    # Returned, the envelope is split into single jobs: the good ones are stored now, and the
    # broker's delivery limit counts the killer's returns alone (its copy's, after the envelope's).
    stored: list[Delivery] = []
    killer_attempts = []
    for _ in range(3):
        worker = await space.open(max_attempts=3)
        received: list[Delivery] = []

        async def killer_in_hand(worker: AmqpQueue = worker, received: list[Delivery] = received) -> bool:
            received.extend(await worker.receive("index", 10, 0.2))
            return any(d.body == b"killer" for d in received)

        await eventually(killer_in_hand, timeout=20, interval=0)
        good = [d for d in received if d.body != b"killer"]
        await worker.ack("index", good)
        stored.extend(good)
        killer_attempts += [d.attempts for d in received if d.body == b"killer"]
        await worker.close()  # killed again

    async def dead() -> int:
        return await space.message_count("index.dead")

    assert await eventually(dead) == 1
    assert bodies(stored) == [b"good-1", b"good-2"]
    assert all(d.attempts == 2 for d in stored)
    assert killer_attempts == [2, 3, 4]
    buried = await space.get_one("index.dead")
    assert buried is not None and buried.body == b"killer"
    survivor = await space.open(max_attempts=3)
    assert await survivor.receive("index", 10, 0.5) == []


async def test_single_job_messages_without_the_envelope_header_are_one_job_each(space: QueueNamespace) -> None:
    queue = await space.open()
    await queue.depth("messages")  # declares the topic's queues
    # What a previous version queued, and a message claiming jobs its framing does not hold.
    plain = [b"old-1", b"\x00\x00\x00\x01x"]
    async with space.channel() as channel:
        for body in plain:
            await channel.default_exchange.publish(aio_pika.Message(body), f"{space.prefix}.messages")
        broken = aio_pika.Message(b"\x00\x00\x00\x09short", headers={"x-chatd-jobs": 2})
        await channel.default_exchange.publish(broken, f"{space.prefix}.messages")
    received = await receive_all(queue, "messages", 3)
    # The broken one is handed out whole, for its consumer to dead-letter as undecodable.
    assert bodies(received) == sorted([*plain, b"\x00\x00\x00\x09short"])
    await queue.dead_letter("messages", [d for d in received if d.body.endswith(b"short")])
    await queue.ack("messages", [d for d in received if not d.body.endswith(b"short")])

    async def dead() -> int:
        return await space.message_count("messages.dead")

    assert await eventually(dead) == 1
    assert await queue.receive("messages", 10, 0.5) == []


async def test_an_unreachable_broker_fails_fast(space: QueueNamespace) -> None:
    port = free_port()  # nothing listens there
    await fails_without_hanging(AmqpQueue(f"amqp://guest:guest@127.0.0.1:{port}/", prefix=space.prefix).open)

    closed = await space.open()
    await closed.close()
    with pytest.raises(BackendUnavailable):
        await closed.publish("messages", [b"x"])
    with pytest.raises(BackendUnavailable):
        await closed.ping()


async def test_queues_are_declared_on_first_use_and_destroyed(space: QueueNamespace) -> None:
    queue = await space.open()
    await queue.ping()
    # Opening declares no queue: most processes and tests never use some topics.
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await space.message_count("messages")
    await queue.publish("messages", [b"x"])
    await queue.retry("messages", await receive_all(queue, "messages", 1))
    assert await space.message_count("messages.dead") == 0
    await queue.destroy()
    for name in ("messages", "messages.dead", "delayed-retries"):
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await space.message_count(name)
    with pytest.raises(BackendUnavailable):
        await queue.ping()  # its exchange is gone too


async def test_a_queue_deleted_behind_its_back_is_declared_again(space: QueueNamespace) -> None:
    queue = await space.open()
    await queue.publish("chats", [b"first"])
    await space.delete_queue("chats")
    with pytest.raises(BackendUnavailable):
        await queue.publish("chats", [b"unroutable"])  # the broker returned it: not queued
    await queue.publish("chats", [b"second"])
    assert await space.message_count("chats") == 1


# -- a private broker, restarted under a running publisher and consumer ----------------------


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[PrivateRabbitmq]:
    async with running(PrivateRabbitmq(tmp_path)) as broker:
        yield broker


@pytest.fixture
async def private_space(private_broker: PrivateRabbitmq) -> AsyncIterator[QueueNamespace]:
    namespace = QueueNamespace(private_broker.url)
    try:
        yield namespace
    finally:
        if private_broker.process is None:
            await private_broker.start()  # a test that failed while it was down
        await namespace.cleanup()


@pytest.mark.faults
async def test_publisher_and_consumer_recover_from_a_broker_restart(
    private_broker: PrivateRabbitmq, private_space: QueueNamespace
) -> None:
    space = private_space
    publisher, consumer, leaving = await space.open(), await space.open(), await space.open()
    await publisher.publish("messages", [b"before-1", b"before-2", b"before-3"])
    held = await receive_all(consumer, "messages", 1, max_batch=1)
    await leaving.receive("chats", 10, 0.0)

    await private_broker.stop()
    # Fails at once, without waiting out a confirm timeout for a reconnection.
    await fails_without_hanging(lambda: publisher.publish("messages", [b"during"]), bound=CONFIRM_TIMEOUT)
    with pytest.raises(BackendUnavailable):
        await consumer.ping()
    with pytest.raises(BackendUnavailable):
        await consumer.depth("messages")
    await consumer.ack("messages", held)  # its channel died with the broker: no error
    assert await consumer.receive("messages", 10, 0.3) == []  # stale prefetched jobs are dropped
    await asyncio.wait_for(leaving.close(), 5)  # shutting down does not wait for the broker

    await private_broker.start()

    async def published() -> bool:
        try:
            await publisher.publish("messages", [b"after"])
            return True
        except BackendUnavailable:
            return False

    await eventually(published, timeout=30, interval=0.2)
    # Durable queues and persistent jobs outlive the broker; the consumer re-subscribes by itself.
    received = await receive_all(consumer, "messages", 4, timeout=30)
    assert bodies(received) == [b"after", b"before-1", b"before-2", b"before-3"]
    await consumer.ack("messages", received)
    await consumer.ping()
    assert await consumer.depth("messages") == 0
