"""The job queues on RabbitMQ, through aio-pika's self-healing ("robust") connection.

Under the prefix (``chatd`` below), declared the first time a topic is used:

- ``chatd.messages``: the topic's durable quorum queue. Quorum queues replicate, and count
  the returns of a job in ``x-delivery-count``, which ``Delivery.attempts`` includes, so a
  consumer crash counts as an attempt. Their ``x-delivery-limit`` dead-letters a job that kept
  killing its consumers ``max_attempts`` times, before they could decide anything about it.
- ``chatd.messages.dead``: a durable (classic) queue for poison jobs; ``dead_letter()``
  rejects without requeue, and the ``chatd.dead-letter`` exchange routes the job there.
- ``chatd.delayed-retries``: ``retry()`` publishes a copy here, through the exchange of the
  same name, with the attempts so far in a header, then acks the original. The copy expires
  after ``RETRY_DELAY_MS`` and is dead-lettered back to its topic's queue (its routing key).
  A plain requeue would redeliver at once, so a failing job would spin through all its
  attempts in milliseconds; this way it waits on the broker, holding no prefetch slot. One
  queue serves every topic: each quorum queue costs the broker file handles and a Raft log.

Publishing uses one channel with publisher confirms; each topic's consumer has a channel of its
own, so a prefetch or a channel error stays with its topic; declarations, depth and ping use a
third. A job's way back from the retry queue is dead-lettered at-least-once: it cannot be lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from yarl import URL

from chatd.errors import BackendUnavailable
from chatd.ports import Delivery

logger = logging.getLogger(__name__)

TOPICS = ("chats", "messages", "index")
RETRY_DELAY_MS = 500
ATTEMPTS_HEADER = "x-chatd-attempts"
# Bounds on every broker round trip: an outage must become BackendUnavailable, never a hang.
CONNECT_TIMEOUT = 5.0
CONFIRM_TIMEOUT = 5.0
OPERATION_TIMEOUT = 5.0
PING_TIMEOUT = 2.0
# The broker stops delivering to a consumer holding this many unsettled jobs: twice a batch
# keeps the next batch ready while one is processed; the floor lets a caller take a few small
# batches before settling any.
PREFETCH_PER_BATCH = 2
MIN_PREFETCH = 256
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT

# What a lost or unreachable broker looks like (aiormq reports a closed connection or channel
# as a RuntimeError); anything else, a refused declaration say, propagates as it is.
_OUTAGE = (ConnectionError, OSError, TimeoutError, RuntimeError, DeliveryError)


def _is_live(message: AbstractIncomingMessage) -> bool:
    """False once the message's channel is gone: only that channel could settle it."""
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


@dataclass
class _Consumer:
    """One topic's consumer: its channel, and the jobs pushed to it but not handed out yet."""

    channel: AbstractRobustChannel
    queue: AbstractRobustQueue
    prefetch: int
    buffer: deque[AbstractIncomingMessage] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    tag: str = ""

    async def push(self, message: AbstractIncomingMessage) -> None:
        self.buffer.append(message)
        self.arrived.set()

    def take(self, limit: int) -> list[AbstractIncomingMessage]:
        """Up to ``limit`` buffered jobs, dropping stale ones (from before a reconnect)."""
        taken: list[AbstractIncomingMessage] = []
        while self.buffer and len(taken) < limit:
            message = self.buffer.popleft()
            if _is_live(message):
                taken.append(message)
        return taken

    def waiting(self) -> int:
        return sum(1 for message in self.buffer if _is_live(message))


def _count(value: Any) -> int:
    try:
        return max(int(value.decode() if isinstance(value, bytes) else value), 0)
    except (TypeError, ValueError):
        return 0


def attempts_of(message: AbstractIncomingMessage) -> int:
    """Deliveries of this job so far, this one included.

    A retried copy carries its predecessors' attempts in ``ATTEMPTS_HEADER``; the quorum queue
    adds the returns of this copy (a classic queue only says whether there was one).
    """
    headers = message.headers or {}
    returned = headers.get("x-delivery-count")
    returned_count = _count(returned) if returned is not None else int(bool(message.redelivered))
    return _count(headers.get(ATTEMPTS_HEADER, 0)) + returned_count + 1


class AmqpQueue:
    """Durable job queues on RabbitMQ: quorum queues, publisher confirms, delayed retries."""

    name = "rabbitmq"

    def __init__(self, url: str, prefix: str = "chatd", max_attempts: int = 10):
        self.url = url
        self.prefix = prefix
        self.max_attempts = max_attempts
        self._dead_letters = f"{prefix}.dead-letter"
        self._retries = f"{prefix}.delayed-retries"
        self._connection: AbstractRobustConnection | None = None
        self._publishing: AbstractRobustChannel | None = None
        self._admin: AbstractRobustChannel | None = None
        self._retry_exchange: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._consumers: dict[str, _Consumer] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._connection is not None:
            return
        # A robust connection reconnects by itself; try every second, not every five.
        options: dict[str, Any] = {} if "reconnect_interval" in URL(self.url).query else {"reconnect_interval": 1}
        try:
            connection = await asyncio.wait_for(
                aio_pika.connect_robust(self.url, timeout=CONNECT_TIMEOUT, **options), CONNECT_TIMEOUT * 2
            )
        except _OUTAGE as exc:
            raise BackendUnavailable(f"rabbitmq: cannot connect: {exc!r}") from exc
        self._connection = connection
        try:
            self._publishing = await self._bounded(connection.channel(publisher_confirms=True, on_return_raises=True))
            self._admin = await self._bounded(connection.channel(publisher_confirms=False))
            # Exchanges cost the broker next to nothing: declare them now, queues when needed.
            self._retry_exchange = await self._bounded(
                self._publishing.declare_exchange(self._retries, aio_pika.ExchangeType.DIRECT, durable=True)
            )
            await self._bounded(
                self._admin.declare_exchange(self._dead_letters, aio_pika.ExchangeType.DIRECT, durable=True)
            )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop consuming, give back what was prefetched but not handed out, disconnect."""
        connection, self._connection = self._connection, None
        connected = connection is not None and connection.connected.is_set()
        consumers, self._consumers = self._consumers, {}
        for topic, consumer in consumers.items():
            await self._stop_consumer(topic, consumer, connected)
        self._publishing = self._admin = self._retry_exchange = None
        self._declared.clear()
        if connection is not None:
            await connection.close()

    async def ping(self) -> None:
        """Connected, and the broker answers a passive declaration (of our exchange) at once."""
        channel = await self._bounded(self._admin_channel().get_underlay_channel(), PING_TIMEOUT)
        try:
            await self._bounded(channel.exchange_declare(self._dead_letters, passive=True), PING_TIMEOUT)
        except AMQPError as exc:  # the namespace is gone
            raise BackendUnavailable(f"rabbitmq: {exc!r}") from exc

    async def destroy(self) -> None:
        """Delete every queue and exchange this adapter declares under its prefix."""
        admin = self._admin_channel()
        consumers, self._consumers = self._consumers, {}
        for topic, consumer in consumers.items():
            # Closed first, or the robust channel would declare its queue again.
            await self._stop_consumer(topic, consumer, connected=True)
            await self._quietly(consumer.channel.close())
        for topic in sorted(set(TOPICS) | self._declared):
            await self._bounded(admin.queue_delete(self._queue(topic)))
            await self._bounded(admin.queue_delete(self._queue(topic, "dead")))
        await self._bounded(admin.queue_delete(self._retries))
        for exchange in (self._retries, self._dead_letters):
            await self._bounded(admin.exchange_delete(exchange))
        self._declared.clear()

    # -- the Queue port --------------------------------------------------------------------

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        if not bodies:
            return
        await self._ensure_topic(topic)
        assert self._publishing is not None
        messages = [aio_pika.Message(body, delivery_mode=PERSISTENT) for body in bodies]
        outcomes = await self._publish(self._publishing.default_exchange, self._queue(topic), messages, topic)
        failures = [failure for failure in outcomes if failure is not None]
        if failures:
            raise BackendUnavailable(
                f"rabbitmq: {len(failures)} of {len(messages)} jobs unconfirmed: {failures[0]!r}"
            ) from failures[0]

    async def receive(self, topic: str, max_batch: int, max_wait: float) -> list[Delivery]:
        consumer = await self._consumer(topic, max_batch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        messages = consumer.take(max_batch)
        while not messages and (remaining := deadline - loop.time()) > 0:
            consumer.arrived.clear()
            try:
                await asyncio.wait_for(consumer.arrived.wait(), remaining)
            except TimeoutError:
                pass
            await asyncio.sleep(0)  # jobs read in the same chunk are still on their way to the buffer
            messages = consumer.take(max_batch)
        return [Delivery(body=message.body, attempts=attempts_of(message), tag=message) for message in messages]

    async def ack(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        await self._settle(topic, deliveries, "ack")

    async def retry(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        live = [delivery for delivery in deliveries if _is_live(delivery.tag)]
        if len(live) < len(deliveries):
            logger.warning(
                "%s: %d jobs to retry lost their channel; the broker delivers them again",
                topic,
                len(deliveries) - len(live),
            )
        if not live:
            return
        copies = [
            aio_pika.Message(delivery.body, delivery_mode=PERSISTENT, headers={ATTEMPTS_HEADER: delivery.attempts})
            for delivery in live
        ]
        try:
            await self._ensure_topic(topic)  # the retry queue's binding for this topic
            assert self._retry_exchange is not None
            outcomes = await self._publish(self._retry_exchange, self._queue(topic), copies, topic)
        except BackendUnavailable as exc:
            outcomes = [exc] * len(live)
        await self._settle(topic, [d for d, failure in zip(live, outcomes) if failure is None], "ack")
        undelayed = [d for d, failure in zip(live, outcomes) if failure is not None]
        if undelayed:
            # Without a delayed copy, an immediate redelivery is the next best thing.
            logger.warning(
                "%s: could not delay %d retries (%r); requeueing them",
                topic,
                len(undelayed),
                next(failure for failure in outcomes if failure is not None),
            )
            await self._settle(topic, undelayed, "requeue")

    async def dead_letter(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        await self._settle(topic, deliveries, "reject")

    async def depth(self, topic: str) -> int:
        await self._ensure_topic(topic)
        admin = await self._bounded(self._admin_channel().get_underlay_channel())
        declared = await self._bounded(admin.queue_declare(self._queue(topic), passive=True))
        consumer = self._consumers.get(topic)
        if consumer is None:
            return int(declared.message_count or 0)
        # Jobs no longer ready may still be on their way to our buffer: a round trip on the
        # consumer's channel (a no-op qos) lets them arrive, so that none is counted nowhere.
        channel = await self._bounded(consumer.channel.get_underlay_channel())
        await self._bounded(channel.basic_qos(prefetch_count=consumer.prefetch))
        for _ in range(3):
            await asyncio.sleep(0)
        return int(declared.message_count or 0) + consumer.waiting()

    # -- internals -------------------------------------------------------------------------

    def _queue(self, topic: str, kind: str = "") -> str:
        return f"{self.prefix}.{topic}" + (f".{kind}" if kind else "")

    def _admin_channel(self) -> AbstractRobustChannel:
        # Fail fast while the robust connection is reconnecting: a 503 now, not a wait.
        if self._connection is None or not self._connection.connected.is_set() or self._admin is None:
            raise BackendUnavailable("rabbitmq: not connected")
        return self._admin

    async def _bounded(self, operation: Any, timeout: float = OPERATION_TIMEOUT) -> Any:
        try:
            return await asyncio.wait_for(operation, timeout)
        except _OUTAGE as exc:
            raise BackendUnavailable(f"rabbitmq: {exc!r}") from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise BackendUnavailable("rabbitmq: connection lost") from exc  # aiormq cancels calls in flight

    async def _quietly(self, operation: Any) -> None:
        try:
            await self._bounded(operation)
        except BackendUnavailable as exc:
            logger.debug("rabbitmq: ignored while shutting down: %r", exc)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _ensure_topic(self, topic: str) -> None:
        """Declare the topic's queues once; the admin channel declares them again after a reconnect."""
        if topic in self._declared:
            return
        async with self._lock(f"declare:{topic}"):
            if topic in self._declared:
                return
            admin, work, dead = self._admin_channel(), self._queue(topic), self._queue(topic, "dead")
            quorum = {"x-queue-type": "quorum"}
            at_least_once = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
            # Poison jobs are parked, not worked: a classic queue is enough, and cheaper.
            dead_queue = await self._declare(admin, dead, {"x-queue-type": "classic"})
            await self._bounded(dead_queue.bind(self._dead_letters, routing_key=dead))
            retries = await self._declare(
                admin,
                self._retries,
                {**quorum, **at_least_once, "x-message-ttl": RETRY_DELAY_MS, "x-dead-letter-exchange": ""},
            )
            await self._bounded(retries.bind(self._retries, routing_key=work))
            # The limit counts returns; the first delivery is not one.
            await self._declare(
                admin,
                work,
                {
                    **quorum,
                    **at_least_once,
                    "x-delivery-limit": max(self.max_attempts - 1, 1),
                    "x-dead-letter-exchange": self._dead_letters,
                    "x-dead-letter-routing-key": dead,
                },
            )
            self._declared.add(topic)

    async def _declare(self, admin: AbstractRobustChannel, name: str, arguments: dict[str, Any]) -> Any:
        """Declare a durable queue on the admin channel, which declares it again after a reconnect.

        A queue declared earlier with other arguments (max_attempts changed, say) is kept as it
        is: its jobs are worth more than the new setting. That check runs on a throw-away
        channel, because a refused declaration closes its channel.
        """
        transport = self._connection.transport if self._connection else None
        if transport is None:
            raise BackendUnavailable("rabbitmq: not connected")
        probe = await self._bounded(transport.connection.channel(publisher_confirms=False))
        try:
            await self._bounded(probe.queue_declare(name, durable=True, arguments=arguments))
        except ChannelPreconditionFailed as exc:
            logger.warning("rabbitmq: queue %s exists with other arguments (%s); using it as is", name, exc)
            return await self._bounded(admin.declare_queue(name, passive=True))
        finally:
            await self._quietly(probe.close())
        return await self._bounded(admin.declare_queue(name, durable=True, arguments=arguments))

    async def _publish(
        self, exchange: AbstractExchange, routing_key: str, messages: list[aio_pika.Message], topic: str
    ) -> list[BaseException | None]:
        """Publish concurrently; once the broker answered for every message, each one's failure or None."""
        self._admin_channel()  # fail fast while disconnected
        results = await asyncio.gather(
            *(
                asyncio.wait_for(exchange.publish(message, routing_key, mandatory=True), CONFIRM_TIMEOUT)
                for message in messages
            ),
            return_exceptions=True,
        )
        outcomes = [result if isinstance(result, BaseException) else None for result in results]
        for failure in outcomes:
            if isinstance(failure, PublishError):
                self._declared.discard(topic)  # unroutable: a queue was deleted; declare it again
            # aiormq cancels the confirms in flight when the connection drops (gather itself
            # raises if it is this task that is cancelled).
            elif failure is not None and not isinstance(failure, (*_OUTAGE, asyncio.CancelledError)):
                raise failure
        return outcomes

    async def _settle(self, topic: str, deliveries: Sequence[Delivery], how: str) -> None:
        """Settle each on the channel it came from; if that is gone, the broker redelivers it."""

        async def settle(message: AbstractIncomingMessage) -> None:
            if how == "ack":
                await message.ack()
            elif how == "reject":
                await message.reject(requeue=False)
            else:
                await message.nack(requeue=True)  # RabbitMQ 4.3+ does not count a nack as a failure

        # Concurrently: each call waits until its frame is written, and their order does not matter.
        results = await asyncio.gather(*(settle(delivery.tag) for delivery in deliveries), return_exceptions=True)
        lost = [result for result in results if isinstance(result, _OUTAGE)]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, _OUTAGE):
                raise result  # settling a job twice, say: a bug, not an outage
        if lost:
            logger.warning(
                "%s: could not %s %d jobs (%r); they will be delivered again", topic, how, len(lost), lost[0]
            )

    async def _consumer(self, topic: str, max_batch: int) -> _Consumer:
        if topic in self._consumers:
            return self._consumers[topic]
        async with self._lock(f"consume:{topic}"):
            if topic not in self._consumers:
                await self._ensure_topic(topic)
                prefetch = max(PREFETCH_PER_BATCH * max_batch, MIN_PREFETCH)
                self._consumers[topic] = await self._start_consumer(topic, prefetch)
            return self._consumers[topic]

    async def _start_consumer(self, topic: str, prefetch: int) -> _Consumer:
        self._admin_channel()  # fail fast while disconnected
        assert self._connection is not None
        channel: AbstractRobustChannel = await self._bounded(self._connection.channel(publisher_confirms=False))
        try:
            await self._bounded(channel.set_qos(prefetch_count=prefetch))
            # Passive: the admin channel owns the arguments (and declares the queue after a reconnect).
            queue = await self._bounded(channel.declare_queue(self._queue(topic), passive=True))
            consumer = _Consumer(channel, queue, prefetch)
            consumer.tag = await self._bounded(queue.consume(consumer.push))
        except BaseException:
            await self._quietly(channel.close())
            raise
        return consumer

    async def _stop_consumer(self, topic: str, consumer: _Consumer, connected: bool) -> None:
        """Cancel the consumer and requeue what it prefetched (a nack: not a failed attempt)."""
        if not connected:
            consumer.buffer.clear()  # the broker requeues them when it sees the connection gone
            return
        await self._quietly(consumer.queue.cancel(consumer.tag))
        prefetched = [Delivery(message.body, tag=message) for message in consumer.take(len(consumer.buffer))]
        await self._settle(topic, prefetched, "requeue")
        if prefetched:
            logger.info("%s: gave %d prefetched jobs back", topic, len(prefetched))
