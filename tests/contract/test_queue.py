"""The Queue contract, embedded and on RabbitMQ."""

from __future__ import annotations

import pytest

from chatd.backends.sqlite_queue import SqliteQueue
from chatd.ports import Backends, Delivery
from tests.conftest import Namespace
from tests.factories import eventually


@pytest.fixture
def ports() -> tuple[str, ...]:
    """Only the queue on the real servers: nothing else is created for these tests."""
    return ("queue",)


async def receive_batches(backends: Backends, topic: str, count: int, batch: int = 50) -> list[list[Delivery]]:
    """Receive until ``count`` jobs came, in batches of at most ``batch``; every non-empty batch."""
    batches: list[list[Delivery]] = []

    async def more() -> bool:
        if received := await backends.queue.receive(topic, batch, 0.2):
            batches.append(received)
        return sum(map(len, batches)) >= count

    await eventually(more, timeout=20)
    return batches


async def receive_all(backends: Backends, topic: str, count: int, batch: int = 50) -> list[Delivery]:
    return [delivery for received in await receive_batches(backends, topic, count, batch) for delivery in received]


async def test_publish_receive_ack(backends: Backends) -> None:
    queue = backends.queue
    bodies = [f"job {n}".encode() for n in range(120)]
    await queue.publish("messages", bodies)
    received = await receive_all(backends, "messages", 120, batch=50)
    assert sorted(d.body for d in received) == sorted(bodies)
    await queue.ack("messages", received)
    assert await queue.receive("messages", 10, 0.3) == []
    assert await eventually(lambda: _is_zero(queue.depth("messages")))


async def _is_zero(depth) -> bool:  # type: ignore[no-untyped-def]
    return await depth == 0


async def test_batches_are_bounded(backends: Backends) -> None:
    await backends.queue.publish("index", [b"x"] * 30)
    batches = await receive_batches(backends, "index", 30, batch=10)
    assert [len(received) for received in batches if len(received) > 10] == []
    assert sum(map(len, batches)) == 30
    await backends.queue.ack("index", [delivery for received in batches for delivery in received])


async def test_topics_are_separate(backends: Backends) -> None:
    await backends.queue.publish("chats", [b"chat"])
    await backends.queue.publish("messages", [b"message"])
    chats = await receive_all(backends, "chats", 1)
    assert [d.body for d in chats] == [b"chat"]
    messages = await receive_all(backends, "messages", 1)
    assert [d.body for d in messages] == [b"message"]
    await backends.queue.ack("chats", chats)
    await backends.queue.ack("messages", messages)


async def test_retry_delivers_again_with_more_attempts(namespace: Namespace, backends: Backends) -> None:
    await backends.queue.publish("messages", [b"again"])
    first = await receive_all(backends, "messages", 1)
    assert first[0].attempts == 1
    await backends.queue.retry("messages", first)
    namespace.clock.advance(0.5)  # past the embedded queue's retry pause (RabbitMQ's passes in real time)
    second = await receive_all(backends, "messages", 1)
    assert second[0].body == b"again" and second[0].attempts == 2
    await backends.queue.ack("messages", second)


async def test_release_delivers_again_without_counting_the_attempt(namespace: Namespace, backends: Backends) -> None:
    """An outage gives jobs back as often as it lasts: none of them comes nearer the dead letters."""
    await backends.queue.publish("messages", [b"failed", b"stopped"])  # one envelope on RabbitMQ
    received = await receive_all(backends, "messages", 2)
    for _ in range(3):
        assert sorted(d.attempts for d in received if d.body == b"stopped") == [1]
        await backends.queue.retry("messages", [d for d in received if d.body == b"failed"])  # a real failure
        await backends.queue.release("messages", [d for d in received if d.body == b"stopped"])  # an outage
        namespace.clock.advance(0.5)  # past the embedded queue's pause (RabbitMQ's passes in real time)
        received = await receive_all(backends, "messages", 2)
    assert sorted((d.body, d.attempts) for d in received) == [(b"failed", 4), (b"stopped", 1)]
    await backends.queue.ack("messages", received)
    assert await backends.queue.receive("messages", 10, 0.6) == []


async def test_dead_letter_removes_the_job(backends: Backends) -> None:
    await backends.queue.publish("messages", [b"poison", b"fine"])
    received = await receive_all(backends, "messages", 2)
    poison = [d for d in received if d.body == b"poison"]
    await backends.queue.dead_letter("messages", poison)
    await backends.queue.ack("messages", [d for d in received if d.body == b"fine"])
    assert await backends.queue.receive("messages", 10, 1.0) == []


async def test_unacked_jobs_survive_their_consumer(namespace: Namespace, backends: Backends) -> None:
    """A consumer that dies without acking loses nothing: the jobs come back elsewhere."""
    await backends.queue.publish("messages", [b"one", b"two"])
    await receive_all(backends, "messages", 2)
    await backends.queue.close()  # the consumer goes away holding both jobs, unacked
    other = await namespace.open_backends()
    if isinstance(other.queue, SqliteQueue):
        # The embedded queue redelivers when the dead consumer's lease runs out: let it run out.
        namespace.clock.advance(other.queue.lease_seconds)
    again = await receive_all(other, "messages", 2)
    assert sorted(d.body for d in again) == [b"one", b"two"]
    assert all(d.attempts == 2 for d in again)
    await other.queue.ack("messages", again)
    await backends.queue.open()  # so that the fixture can close it
