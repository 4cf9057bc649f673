"""Failures an operator alerts on are counted: backend errors by kind, loop restarts, job age."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import REGISTRY

from chatd import jobs, metrics
from chatd.errors import BackendUnavailable
from chatd.ports import Delivery
from chatd.supervisor import Supervisor
from chatd.workers.consumer import BatchConsumer, Outcome


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class _Down(BatchConsumer[bytes]):
    topic = "messages"

    def decode(self, body: bytes) -> bytes:
        return body

    async def handle(self, batch: Sequence[tuple[Delivery, bytes]]) -> Outcome:
        raise BackendUnavailable("mysql unreachable: connection refused", backend="mysql", cause="connection")


class _Queue:
    def __init__(self) -> None:
        self.released: list[Delivery] = []

    async def release(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        self.released.extend(deliveries)


async def test_an_outage_counts_as_a_store_error_by_cause_and_its_jobs_as_retried() -> None:
    queue = _Queue()
    consumer = _Down(queue, batch_size=10, batch_wait=0, max_attempts=3)  # type: ignore[arg-type]
    errors = _value("chatd_backend_errors_total", backend="store", kind="unavailable")
    outages = _value("chatd_backend_unavailable_total", backend="mysql", cause="connection")
    retried = _value("chatd_jobs_retried_total", topic="messages")
    assert not await consumer.process([Delivery(b"a"), Delivery(b"b")])
    assert _value("chatd_backend_errors_total", backend="store", kind="unavailable") == errors + 1
    assert _value("chatd_backend_unavailable_total", backend="mysql", cause="connection") == outages + 1
    assert _value("chatd_jobs_retried_total", topic="messages") == retried + 2
    assert len(queue.released) == 2  # given back without spending an attempt
    assert (consumer.tally.done, consumer.tally.retried, consumer.tally.dead) == (0, 2, 0)


def test_backend_errors_are_told_apart_by_their_type_not_their_text() -> None:
    def outage(backend: str, message: str = "mysql: misleading text") -> BackendUnavailable:
        return BackendUnavailable(message, backend=backend, cause="connection")

    assert metrics.backend_of(outage("rabbitmq")) == "broker"
    assert metrics.backend_of(outage("elasticsearch")) == "search"
    assert metrics.backend_of(outage("mysql", "rabbitmq: the text names another engine")) == "store"
    assert metrics.backend_of(outage("sqlite")) == "store"
    assert metrics.backend_of(outage("redis")) == "redis"
    assert metrics.backend_of(BackendUnavailable("mysql: no type given")) == "other"


async def test_a_crashed_loop_is_counted_as_restarted() -> None:
    supervisor = Supervisor(shutdown_timeout=5)
    crashes = 0
    finished = asyncio.Event()

    async def body(stopping: asyncio.Event) -> None:
        nonlocal crashes
        if crashes < 2:
            crashes += 1
            raise RuntimeError("boom")
        finished.set()
        await stopping.wait()

    before = _value("chatd_loop_restarts_total", loop="crashy")
    supervisor.start("crashy", body)
    await asyncio.wait_for(finished.wait(), 10)
    await supervisor.stop()
    assert _value("chatd_loop_restarts_total", loop="crashy") == before + 2


async def test_the_oldest_job_age_counts_from_publishing(backends) -> None:  # type: ignore[no-untyped-def]
    queue = backends.queue
    assert await queue.oldest_age(jobs.CHATS) in (0.0, None)
    await queue.publish(jobs.CHATS, [b"one", b"two"])
    await queue.publish(jobs.CHATS, [b"three"])
    if backends.queue.name == "rabbitmq":
        # The broker tells no age: the consumer's prefetched messages do. Take one job, so
        # the rest wait prefetched here, and make their envelope two minutes old.
        assert await queue.oldest_age(jobs.CHATS) is None  # no consumer in this process yet
        [first] = await queue.receive(jobs.CHATS, 1, 5.0)
        consumer = queue._consumers[jobs.CHATS]
        await _until(lambda: sum(envelope.remaining for envelope in consumer.buffer) == 2)
        for envelope in consumer.buffer:
            envelope.queued_at -= 120
    else:
        await queue.db.transaction(lambda conn: conn.execute("UPDATE embedded_jobs SET queued_at = queued_at - 120"))
    age = await queue.oldest_age(jobs.CHATS)
    assert age is not None and 120 <= age < 180
    deliveries = [] if backends.queue.name != "rabbitmq" else [first]
    while batch := await queue.receive(jobs.CHATS, 10, 0.5):
        deliveries += batch
    await queue.ack(jobs.CHATS, deliveries)
    assert await queue.oldest_age(jobs.CHATS) == 0.0


async def _until(check) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")
