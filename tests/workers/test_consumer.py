"""BatchConsumer's failure paths, over each backend set's queue."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from chatd.errors import BackendUnavailable
from chatd.ports import Backends, Delivery, Queue
from chatd.workers.consumer import BatchConsumer, Outcome
from tests.conftest import Namespace
from tests.factories import eventually


class OutageOnOneJob(BatchConsumer[bytes]):
    """Fails any batch of several jobs; alone, the job b"outage" meets a backend outage."""

    topic = "messages"

    def __init__(self, backends: Backends):
        super().__init__(backends.queue, batch_size=10, batch_wait=0.0, max_attempts=5)
        self.stored: list[bytes] = []

    def decode(self, body: bytes) -> bytes:
        return body

    async def handle(self, batch: Sequence[tuple[Delivery, bytes]]) -> Outcome:
        if len(batch) > 1:
            raise RuntimeError("this batch fails as a whole (test)")
        if batch[0][1] == b"outage":
            raise BackendUnavailable("store down (test)")
        self.stored.append(batch[0][1])
        return Outcome()


async def test_an_outage_while_retrying_job_by_job_gives_back_the_jobs_not_tried(
    namespace: Namespace, backends: Backends
) -> None:
    consumer = OutageOnOneJob(backends)
    await backends.queue.publish("messages", [b"a", b"outage", b"b", b"c"])
    assert await eventually(lambda: consumer.run_once(max_wait=1.0)) == 4
    assert consumer.stored == [b"a"]
    namespace.clock.advance(0.5)  # past the embedded queue's retry pause
    # The jobs after the outage were given back, not left held by this consumer.
    again: list[bytes] = []

    async def received_all() -> bool:
        again.extend(d.body for d in await backends.queue.receive("messages", 10, 0.5))
        return {b"outage", b"b", b"c"} <= set(again)

    assert await eventually(received_all, timeout=15)


class Stores(BatchConsumer[bytes]):
    topic = "messages"

    def __init__(self, queue: Queue):
        super().__init__(queue, batch_size=10, batch_wait=0.05, max_attempts=5)
        self.stored: list[bytes] = []

    def decode(self, body: bytes) -> bytes:
        return body

    async def handle(self, batch: Sequence[tuple[Delivery, bytes]]) -> Outcome:
        self.stored.extend(job for _, job in batch)
        return Outcome()


class BrokerDownAtFirst:
    """A queue whose first ``receive`` calls meet an outage, as while a broker restarts."""

    def __init__(self, queue: Queue, outages: int):
        self.queue = queue
        self.outages = outages

    async def receive(self, topic: str, max_batch: int, max_wait: float) -> list[Delivery]:
        if self.outages:
            self.outages -= 1
            raise BackendUnavailable("rabbitmq: not connected (test)")
        return await self.queue.receive(topic, max_batch, max_wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


async def test_an_outage_while_receiving_is_waited_out_in_the_loop_not_raised(backends: Backends) -> None:
    # Raised, it would reach the supervisor, whose back-off grows to half a minute while the
    # broker's client refills this consumer's prefetch with jobs nobody handles.
    queue = BrokerDownAtFirst(backends.queue, outages=2)
    consumer = Stores(queue)  # type: ignore[arg-type]
    await backends.queue.publish("messages", [b"a", b"b"])
    stopping = asyncio.Event()
    running = asyncio.create_task(consumer.run(stopping))
    try:
        await eventually(lambda: _true(sorted(consumer.stored) == [b"a", b"b"]), timeout=15)
        assert queue.outages == 0
        assert not running.done(), "the outage ended the consumer's loop"
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)


async def _true(value: bool) -> bool:
    return value


class StoreDownAWhile(BatchConsumer[bytes]):
    """Its store meets an outage on the first ``outages`` batches; then b"flaky" fails once for
    a real reason (a job's own failure, which does count), and every job is stored."""

    topic = "messages"

    def __init__(self, queue: Queue, outages: int):
        super().__init__(queue, batch_size=10, batch_wait=0.05, max_attempts=3)
        self.outages = outages
        self.flaked = False
        self.stored: list[bytes] = []
        self.seen: list[tuple[bytes, int]] = []  # each job handled, with its delivery's attempts

    def decode(self, body: bytes) -> bytes:
        return body

    async def handle(self, batch: Sequence[tuple[Delivery, bytes]]) -> Outcome:
        self.seen.extend((job, delivery.attempts) for delivery, job in batch)
        if self.outages:
            self.outages -= 1
            raise BackendUnavailable(
                "sqlite disk_full: database or disk is full (test)", backend="sqlite", cause="disk_full"
            )
        if not self.flaked and b"flaky" in [job for _, job in batch]:
            self.flaked = len(batch) == 1
            raise RuntimeError("a failure of the job itself (test)")
        self.stored.extend(job for _, job in batch)
        return Outcome()


async def test_an_outage_longer_than_the_attempts_spends_none_of_them(namespace: Namespace, backends: Backends) -> None:
    # More outages than max_attempts: had each given the jobs back as a failed attempt, b"flaky"
    # would reach its real failure with its attempts used up and go to the dead letters.
    consumer = StoreDownAWhile(backends.queue, outages=5)
    await backends.queue.publish("messages", [b"a", b"flaky", b"b"])
    stopping = asyncio.Event()
    running = asyncio.create_task(consumer.run(stopping))
    ticking = asyncio.create_task(_tick(namespace))  # the embedded queue's retry pause passes
    try:
        await eventually(lambda: _true(sorted(consumer.stored) == [b"a", b"b", b"flaky"]), timeout=30)
        assert not running.done(), "the outage ended the consumer's loop"
    finally:
        stopping.set()
        ticking.cancel()
        await asyncio.wait_for(running, 10)
    assert consumer.outages == 0 and consumer.dead_lettered == 0
    assert await backends.queue.dead_depth("messages") == 0  # type: ignore[attr-defined]
    # Every delivery through the outage was the first attempt; only the real failure counted.
    assert {attempts for job, attempts in consumer.seen if job != b"flaky"} == {1}
    assert [attempts for job, attempts in consumer.seen if job == b"flaky"][-1] == 2
    assert len(consumer.stored) == 3  # each stored once
    assert await backends.queue.receive("messages", 10, 0.6) == []


async def _tick(namespace: Namespace) -> None:
    while True:
        namespace.clock.advance(0.1)
        await asyncio.sleep(0.05)


class AckDownOnce:
    """A queue whose first ``ack`` meets an outage, as a broker or a full disk would."""

    def __init__(self, queue: Queue):
        self.queue = queue
        self.failed_acks = 0

    async def ack(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        if not self.failed_acks:
            self.failed_acks += 1
            raise BackendUnavailable("rabbitmq: not connected (test)", backend="rabbitmq", cause="connection")
        await self.queue.ack(topic, deliveries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


async def test_an_outage_while_settling_is_waited_out_in_the_loop_not_raised(backends: Backends) -> None:
    queue = AckDownOnce(backends.queue)
    consumer = Stores(queue)  # type: ignore[arg-type]
    await backends.queue.publish("messages", [b"a"])
    stopping = asyncio.Event()
    running = asyncio.create_task(consumer.run(stopping))
    try:
        await eventually(lambda: _true(queue.failed_acks == 1 and consumer.stored == [b"a"]), timeout=15)
        await backends.queue.publish("messages", [b"b"])  # the loop goes on after the outage
        await eventually(lambda: _true(b"b" in consumer.stored), timeout=15)
        assert not running.done(), "the outage ended the consumer's loop"
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)
