"""The job queues on RabbitMQ, through aio-pika's self-healing ("robust") connection.

Under the prefix (``chatd`` below), declared the first time a topic is used:

- ``chatd.messages``: the topic's durable quorum queue. Quorum queues replicate, and count
  the returns of a job in ``x-delivery-count``, which ``Delivery.attempts`` includes, so a
  consumer crash counts as an attempt. Their ``x-delivery-limit`` dead-letters a job that kept
  killing its consumers ``max_attempts`` times, before they could decide anything about it
  (the limit counts a message's returns: a copy starts again from zero).
- ``chatd.messages.dead``: a durable quorum queue for poison jobs, one message each:
  ``dead_letter()`` rejects a single-job message without requeue, and the ``chatd.dead-letter``
  exchange routes it there; a dead job out of an envelope is published there on its own.
- ``chatd.delayed-retries``: ``retry()`` publishes a copy here, through the exchange of the
  same name, with the attempts so far in a header, then acks the original (``release()`` too,
  with the attempts before this delivery: an outage is no attempt of the job's). The copy expires
  after ``RETRY_DELAY_MS`` and is dead-lettered back to its topic's queue (its routing key).
  A plain requeue would redeliver at once, so a failing job would spin through all its
  attempts in milliseconds; this way it waits on the broker, holding no prefetch slot. One
  queue serves every topic: each quorum queue costs the broker file handles and a Raft log.

Each ``publish`` call travels as one persistent message, an envelope of many jobs
(``amqp_batches``): the broker's cost is per message. ``receive`` hands out one Delivery per
job, an envelope's jobs maybe across several calls, and the message is settled once each of
its jobs is acked, retried or dead-lettered: all acked, it is acked; otherwise the jobs to
retry travel on as one copy through ``chatd.delayed-retries`` and each dead job as a message
of its own to the dead queue (an operator reads single jobs there), and the original is
acked once the broker confirmed those copies, requeued whole if it did not (duplicates, never
losses: the stores are idempotent). An envelope the broker took back from a consumer is
split into single-job messages before any of its jobs is handed out again; see
``Envelope.must_split``.

Publishing uses one channel with publisher confirms; each topic's consumer has a channel of its
own, so a prefetch or a channel error stays with its topic; declarations, depth and ping use a
third. A job's way back from the retry queue is dead-lettered at-least-once: it cannot be lost.

The URL may name several brokers, comma-separated (``amqp://a/,amqp://b/``): the connection
goes to the first that answers and, when lost, to the next one in turn (``FailoverConnection``),
where the robust connection declares everything again. The guarantees above hold per broker:
jobs on a broker that is gone wait there until it is back (or are lost with it, unless the
brokers are a cluster with quorum queues replicated across it).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    ChannelClosed,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from chatd.backends import amqp_batches as batches
from chatd.backends.amqp_batches import Envelope, Fate, Job, JobsPerMessage
from chatd.backends.lifecycle import Lifecycle
from chatd.errors import BackendUnavailable
from chatd.ports import Delivery
from chatd.settings import server_urls

logger = logging.getLogger(__name__)

TOPICS = ("chats", "messages", "index")
RETRY_DELAY_MS = 500
# Bounds on every broker round trip: an outage must become BackendUnavailable, never a hang.
CONNECT_TIMEOUT = 5.0
CONFIRM_TIMEOUT = 5.0
OPERATION_TIMEOUT = 5.0
PING_TIMEOUT = 2.0
# Messages the broker pushes to a consumer ahead of its acks. It counts messages, not jobs:
# 64 single-job messages still fill a batch worth a transaction, 64 envelopes hold up to
# 16,384 jobs. More would let one worker hoard a backlog that its peers could be working on,
# and would send more envelopes round to be split when it crashes.
PREFETCH = 64
# A message copied elsewhere by a consumer (a retry, a dead job, a split envelope).
Copy = tuple[AbstractExchange, str, aio_pika.Message]

# What a lost or unreachable broker looks like (aiormq reports a closed connection or channel
# as a RuntimeError); anything else, a refused declaration say, propagates as it is.
_OUTAGE = (ConnectionError, OSError, TimeoutError, RuntimeError, DeliveryError)


def outage_cause(exc: BaseException) -> str | None:
    """Why a broker error means "not now" (a BackendUnavailable cause), or None.

    A channel closed with a code of its own (ChannelClosed's subclasses: 403 access refused,
    404 not found, 405 locked, 406 precondition failed) is an answer about the request, not an
    outage; a plain ChannelClosed (closed by the client, or by the broker for a reason aiormq
    does not name: 504 channel error, 541 internal error) is one. So is a 404 about a queue whose
    node is down (a cluster node lost): the queue is there, on a node that does not answer.
    """
    if _node_down(exc):
        return "node_down"
    if isinstance(exc, TimeoutError):  # asyncio's too: a round trip or a confirm not answered in time
        return "timeout"
    if isinstance(exc, ChannelInvalidStateError) or type(exc) is ChannelClosed:
        return "channel_closed"
    if isinstance(exc, PublishError):  # returned unroutable: the queue was deleted under us
        return "unroutable"
    if isinstance(exc, DeliveryError):  # nacked: the broker did not take the message (reject-publish)
        return "nacked"
    if isinstance(exc, (ConnectionError, OSError)):  # aiormq's AMQPConnectionError family, sockets
        return "connection"
    if isinstance(exc, RuntimeError):  # aiormq's "connection closed" / "writer is None"
        return "channel_closed"
    return None


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, _OUTAGE) or type(exc) is ChannelClosed or _node_down(exc)


def _node_down(exc: BaseException) -> bool:
    """NOT_FOUND for a queue that lives on a cluster node that is down: RabbitMQ's own words."""
    return isinstance(exc, ChannelNotFoundEntity) and "is down or inaccessible" in str(exc)


class FailoverConnection(RobustConnection):
    """A robust connection that tries its brokers in turn.

    aio-pika's robust connection reconnects to its one URL. This one moves to the next URL
    of its list before every connection attempt (``RobustConnection``'s private
    ``__connect_transport``, the one place an attempt starts): the first attempt uses
    ``first``; after a lost connection or a failed attempt the next broker in the list is
    tried, round and round, every ``reconnect_interval``. Channels, exchanges, queues and
    consumers are then restored on that broker by the robust connection as after any reconnect.
    """

    def __init__(self, urls: Sequence[str], first: int, made: URL, **kwargs: Any):
        # ``made``: the first URL as connect_robust made it, its options (reconnect_interval,
        # timeout...) in the query; every broker gets them, unless its own URL says otherwise.
        self._urls = [URL(url).update_query({**made.query, **URL(url).query}) for url in urls]
        self._next = first % len(self._urls)
        super().__init__(self._urls[self._next], **kwargs)

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._urls[self._next]
        self._next = (self._next + 1) % len(self._urls)
        logger.info("rabbitmq: connecting to %s", self.url.with_password(None))
        await getattr(RobustConnection, "_RobustConnection__connect_transport")(self)  # noqa: B009


def _unavailable(exc: BaseException, what: str = "") -> BackendUnavailable:
    cause = outage_cause(exc) or "connection"
    return BackendUnavailable(f"rabbitmq: {what + ': ' if what else ''}{exc!r}", backend="rabbitmq", cause=cause)


def _not_connected() -> BackendUnavailable:
    return BackendUnavailable("rabbitmq: not connected", backend="rabbitmq", cause="connection")


@dataclass
class _Consumer:
    """One topic's consumer: its channel, and the messages pushed to it with jobs not handed out yet."""

    channel: AbstractRobustChannel
    queue: AbstractRobustQueue
    sizes: JobsPerMessage
    buffer: deque[Envelope] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    tag: str = ""
    splitting: int = 0  # jobs of envelopes being split: out of the buffer, not yet queued again

    async def push(self, message: AbstractIncomingMessage) -> None:
        envelope = Envelope(message)
        self.sizes.saw(len(envelope.bodies))
        self.buffer.append(envelope)
        self.arrived.set()

    def take(self, limit: int) -> tuple[list[Job], Envelope | None]:
        """Up to ``limit`` jobs, or else one envelope to split; stale messages (from before a
        reconnect) are dropped. One split at a time keeps each call's work bounded."""
        jobs: list[Job] = []
        while self.buffer and len(jobs) < limit:
            envelope = self.buffer[0]
            if envelope.live and envelope.must_split:
                if jobs:
                    break
                self.buffer.popleft()
                return [], envelope
            if envelope.live:
                jobs.extend(envelope.hand_out(limit - len(jobs)))
                if envelope.remaining:
                    break
            self.buffer.popleft()
        return jobs, None

    def waiting(self) -> int:
        return self.splitting + sum(envelope.remaining for envelope in self.buffer if envelope.live)


def _failover_class(urls: Sequence[str], first: int) -> type[RobustConnection]:
    """``connect_robust``'s connection class for ``urls``, starting at ``first`` (it passes one URL on)."""

    class Failover(FailoverConnection):
        def __init__(self, url: URL, **kwargs: Any):
            super().__init__(urls, first, url, **kwargs)

    return Failover


class AmqpQueue(Lifecycle):
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
        self._sizes: dict[str, JobsPerMessage] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._connection is not None:
            return
        # A robust connection reconnects by itself; try every second, not every five. Several
        # URLs (comma-separated): the first that answers, then the next one in turn after a loss.
        urls = server_urls(self.url)
        options: dict[str, Any] = {} if "reconnect_interval" in URL(urls[0]).query else {"reconnect_interval": 1}
        connection: AbstractRobustConnection | None = None
        for first in range(len(urls)):
            try:
                connection = await asyncio.wait_for(
                    aio_pika.connect_robust(
                        urls[first],
                        timeout=CONNECT_TIMEOUT,
                        connection_class=_failover_class(urls, first),
                        **options,
                    ),
                    CONNECT_TIMEOUT * 2,
                )
                break
            except _OUTAGE as exc:
                if first == len(urls) - 1:
                    raise _unavailable(exc, "cannot connect") from exc
                logger.warning(
                    "rabbitmq: cannot connect to broker %d of %d (%r); trying the next", first + 1, len(urls), exc
                )
        assert connection is not None
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
        connection = self._connection
        connected = connection is not None and connection.connected.is_set()
        consumers, self._consumers = self._consumers, {}
        for topic, consumer in consumers.items():
            # While still connected: giving back part of an envelope means publishing a copy.
            await self._stop_consumer(topic, consumer, connected)
        self._connection = None
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
            raise BackendUnavailable(f"rabbitmq: {exc!r}", backend="rabbitmq", cause="not_declared") from exc

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
        """One message per call (a job alone as it is, several in an envelope), or a few past
        the envelope's bounds; back only once the broker confirmed every one."""
        if not bodies:
            return
        await self._ensure_topic(topic)
        assert self._publishing is not None
        exchange, work = self._publishing.default_exchange, self._queue(topic)
        groups = list(batches.groups(bodies))
        messages = [(exchange, work, batches.message(group)) for group in groups]
        outcomes = await self._publish(messages, topic)
        for group in groups:
            self._jobs_per_message(topic).saw(len(group))
        failures = [failure for failure in outcomes if failure is not None]
        if failures:
            raise BackendUnavailable(
                f"rabbitmq: {len(failures)} of {len(messages)} messages ({len(bodies)} jobs) unconfirmed: "
                f"{failures[0]!r}",
                backend="rabbitmq",
                cause=outage_cause(failures[0]) or "connection",
            ) from failures[0]

    async def receive(self, topic: str, max_batch: int, max_wait: float) -> list[Delivery]:
        consumer = await self._consumer(topic)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            jobs, returned = consumer.take(max_batch)
            if returned is not None:
                await self._split(topic, consumer, returned)
            if jobs or (remaining := deadline - loop.time()) <= 0:
                break
            if returned is None:  # the buffer is empty: wait for the broker
                consumer.arrived.clear()
                try:
                    await asyncio.wait_for(consumer.arrived.wait(), remaining)
                except TimeoutError:
                    pass
                await asyncio.sleep(0)  # messages read in the same chunk are still on their way to the buffer
        return [Delivery(body=job.body, attempts=job.envelope.attempts, tag=job) for job in jobs]

    async def ack(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        await self._decide(topic, deliveries, "ack")

    async def retry(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        await self._decide(topic, deliveries, "retry")

    async def release(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        await self._decide(topic, deliveries, "later")

    async def dead_letter(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        await self._decide(topic, deliveries, "dead")

    async def depth(self, topic: str) -> int:
        """Jobs waiting: those prefetched here and not handed out yet, counted exactly, and the
        messages ready on the broker, counted as jobs at the mean of the recent ones this process
        saw on the topic (``JobsPerMessage``). 0 exactly when nothing waits."""
        await self._ensure_topic(topic)
        admin = await self._bounded(self._admin_channel().get_underlay_channel())
        declared = await self._bounded(admin.queue_declare(self._queue(topic), passive=True))
        ready = self._jobs_per_message(topic).jobs(int(declared.message_count or 0))
        consumer = self._consumers.get(topic)
        if consumer is None:
            return ready
        # Messages no longer ready may still be on their way to our buffer: a round trip on the
        # consumer's channel (a no-op qos) lets them arrive, so that none is counted nowhere.
        channel = await self._bounded(consumer.channel.get_underlay_channel())
        await self._bounded(channel.basic_qos(prefetch_count=PREFETCH))
        for _ in range(3):
            await asyncio.sleep(0)
        return ready + consumer.waiting()

    async def dead_depth(self, topic: str) -> int:
        """Messages in the topic's dead-letter queue (one job each)."""
        await self._ensure_topic(topic)
        admin = await self._bounded(self._admin_channel().get_underlay_channel())
        declared = await self._bounded(admin.queue_declare(self._queue(topic, "dead"), passive=True))
        return int(declared.message_count or 0)

    async def oldest_age(self, topic: str) -> float | None:
        """Seconds since the oldest job this process prefetched and has not handed out was first
        published; 0 when it holds none, None when it does not consume the topic.

        The broker tells no message's age over AMQP. With a prefetch of 64 messages, the head of
        a queue that is behind sits in its consumers' buffers, so the workers together see it;
        with no worker at all, ``depth`` is what shows the backlog.
        """
        consumer = self._consumers.get(topic)
        if consumer is None:
            return None
        stamps = [e.queued_at for e in consumer.buffer if e.live and e.remaining and e.queued_at is not None]
        return max(0.0, time.time() - min(stamps)) if stamps else 0.0

    # -- internals -------------------------------------------------------------------------

    def _queue(self, topic: str, kind: str = "") -> str:
        return f"{self.prefix}.{topic}" + (f".{kind}" if kind else "")

    def _admin_channel(self) -> AbstractRobustChannel:
        # Fail fast while the robust connection is reconnecting: a 503 now, not a wait.
        if self._connection is None or not self._connection.connected.is_set() or self._admin is None:
            raise _not_connected()
        return self._admin

    async def _bounded(self, operation: Any, timeout: float = OPERATION_TIMEOUT) -> Any:
        try:
            return await asyncio.wait_for(operation, timeout)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancels calls in flight when the connection drops
            raise BackendUnavailable("rabbitmq: connection lost", backend="rabbitmq", cause="connection") from exc
        except Exception as exc:
            if not _is_outage(exc):
                raise
            raise _unavailable(exc) from exc

    async def _quietly(self, operation: Any) -> None:
        try:
            await self._bounded(operation)
        except BackendUnavailable as exc:
            logger.debug("rabbitmq: ignored while shutting down: %r", exc)

    def _jobs_per_message(self, topic: str) -> JobsPerMessage:
        return self._sizes.setdefault(topic, JobsPerMessage())

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
            # A quorum queue too, though poison jobs are only parked there: a classic queue lives on
            # one node, and while that node is down it cannot even be declared (NOT_FOUND), which
            # stops every publish of the topic. One declared classic before is kept (``_declare``).
            dead_queue = await self._declare(admin, dead, quorum)
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
            raise _not_connected()
        probe = await self._bounded(transport.connection.channel(publisher_confirms=False))
        try:
            await self._bounded(probe.queue_declare(name, durable=True, arguments=arguments))
        except ChannelPreconditionFailed as exc:
            logger.warning("rabbitmq: queue %s exists with other arguments (%s); using it as is", name, exc)
            return await self._bounded(admin.declare_queue(name, passive=True))
        finally:
            await self._quietly(probe.close())
        return await self._bounded(admin.declare_queue(name, durable=True, arguments=arguments))

    async def _publish(self, copies: Sequence[Copy], topic: str) -> list[BaseException | None]:
        """Publish concurrently; once the broker answered for every message, each one's failure or None."""
        self._admin_channel()  # fail fast while disconnected
        results = await asyncio.gather(
            *(
                asyncio.wait_for(exchange.publish(message, routing_key, mandatory=True), CONFIRM_TIMEOUT)
                for exchange, routing_key, message in copies
            ),
            return_exceptions=True,
        )
        outcomes = [result if isinstance(result, BaseException) else None for result in results]
        for failure in outcomes:
            if isinstance(failure, PublishError):
                self._declared.discard(topic)  # unroutable: a queue was deleted; declare it again
            # aiormq cancels the confirms in flight when the connection drops (gather itself
            # raises if it is this task that is cancelled).
            elif failure is not None and not (_is_outage(failure) or isinstance(failure, asyncio.CancelledError)):
                raise failure
        return outcomes

    async def _decide(self, topic: str, deliveries: Sequence[Delivery], fate: Fate) -> None:
        """Record each job's fate, and settle the messages whose every job now has one."""
        complete: list[Envelope] = []
        lost = 0
        for delivery in deliveries:
            job: Job = delivery.tag
            if not job.envelope.live:
                lost += 1
            elif job.envelope.decide(job.index, fate):
                complete.append(job.envelope)
        if lost:
            logger.warning("%s: %d jobs to %s lost their channel; the broker delivers them again", topic, lost, fate)
        await self._settle(topic, complete)

    async def _settle(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Settle each message on the channel it came from; if that is gone, the broker redelivers it."""
        # Concurrently: each waits for its own frames and confirms, and their order does not matter.
        results = await asyncio.gather(
            *(self._settle_one(topic, envelope) for envelope in envelopes), return_exceptions=True
        )
        lost = [result for result in results if isinstance(result, BaseException) and _is_outage(result)]
        for result in results:
            if isinstance(result, BaseException) and not _is_outage(result):
                raise result  # settling a job twice, say: a bug, not an outage
        if lost:
            logger.warning(
                "%s: could not settle %d messages (%r); they will be delivered again", topic, len(lost), lost[0]
            )

    async def _settle_one(self, topic: str, envelope: Envelope) -> None:
        message, fates = envelope.message, set(envelope.fates)
        if fates == {"ack"}:
            await message.ack()
        elif fates == {"dead"} and not envelope.framed:
            await message.reject(requeue=False)  # the dead-letter exchange routes it to the dead queue
        elif fates == {"back"} and (not envelope.framed or envelope.returned):
            # As it is (RabbitMQ 4.3+ does not count a nack as a failure); an envelope the broker
            # took back before is split when it comes round again.
            await message.nack(requeue=True)
        elif (failure := await self._queue_copies(topic, envelope, split=False)) is None:
            await message.ack()
        else:
            # Some copies may be queued already: their jobs will come twice; none is lost.
            logger.warning("%s: could not move the jobs of a message (%r); requeueing it whole", topic, failure)
            await message.nack(requeue=True)

    async def _queue_copies(self, topic: str, envelope: Envelope, split: bool) -> BaseException | None:
        """Queue copies of a message's jobs where their fates send them; a failure, or None once confirmed.

        Jobs to retry travel on as one message (the delayed retry), jobs given back as one, dead
        jobs one message each; for a split, every job as a message of its own. Copies carry the
        attempts so far, so that each job's count goes on.
        """
        try:
            await self._ensure_topic(topic)  # the queues and the retry binding the copies go to
            if self._publishing is None or self._retry_exchange is None:
                raise _not_connected()
            # After a reconnect, the consumer's channel may deliver before this one is restored.
            await self._bounded(self._publishing.ready())
            default, work, attempts = self._publishing.default_exchange, self._queue(topic), envelope.attempts
            # Jobs given back or split were not handed out: this delivery was no attempt for them.
            back = envelope.fated("back")
            groups = [[body] for body in envelope.bodies] if split else [back] if back else []
            since = envelope.queued_at
            copies = [(default, work, batches.message(group, attempts - 1, since)) for group in groups]
            if retry := envelope.fated("retry"):
                copies.append((self._retry_exchange, work, batches.message(retry, attempts, since)))
            # Jobs an outage stopped wait as a retry does, but this delivery was no attempt for them.
            if later := envelope.fated("later"):
                copies.append((self._retry_exchange, work, batches.message(later, attempts - 1, since)))
            dead = self._queue(topic, "dead")
            copies.extend((default, dead, batches.message([body], attempts, since)) for body in envelope.fated("dead"))
            outcomes = await self._publish(copies, topic)
        except BackendUnavailable as exc:
            return exc
        for group in groups:
            self._jobs_per_message(topic).saw(len(group))
        return next((outcome for outcome in outcomes if outcome is not None), None)

    async def _split(self, topic: str, consumer: _Consumer, envelope: Envelope) -> None:
        """Queue each job of a returned envelope as a message of its own, then ack the envelope.

        If the broker does not take the copies, the envelope is handed out whole after all:
        requeueing it would count one more return against all of its jobs.
        """
        consumer.splitting += len(envelope.bodies)
        try:
            failure = await self._queue_copies(topic, envelope, split=True)
        finally:
            consumer.splitting -= len(envelope.bodies)
        if failure is None:
            logger.info("%s: split a returned message into its %d jobs", topic, len(envelope.bodies))
            try:
                await envelope.message.ack()
            except Exception as exc:
                if not _is_outage(exc):
                    raise
                logger.warning("%s: could not ack a split message (%r); its jobs will come twice", topic, exc)
        else:
            logger.warning("%s: could not split a returned message (%r); handing it out whole", topic, failure)
            envelope.keep_whole = True
            consumer.buffer.appendleft(envelope)

    async def _consumer(self, topic: str) -> _Consumer:
        if topic in self._consumers:
            return self._consumers[topic]
        async with self._lock(f"consume:{topic}"):
            if topic not in self._consumers:
                await self._ensure_topic(topic)
                self._consumers[topic] = await self._start_consumer(topic)
            return self._consumers[topic]

    async def _start_consumer(self, topic: str) -> _Consumer:
        self._admin_channel()  # fail fast while disconnected
        assert self._connection is not None
        channel: AbstractRobustChannel = await self._bounded(self._connection.channel(publisher_confirms=False))
        try:
            await self._bounded(channel.set_qos(prefetch_count=PREFETCH))
            # Passive: the admin channel owns the arguments (and declares the queue after a reconnect).
            queue = await self._bounded(channel.declare_queue(self._queue(topic), passive=True))
            consumer = _Consumer(channel, queue, self._jobs_per_message(topic))
            consumer.tag = await self._bounded(queue.consume(consumer.push))
        except BaseException:
            await self._quietly(channel.close())
            raise
        return consumer

    async def _stop_consumer(self, topic: str, consumer: _Consumer, connected: bool) -> None:
        """Cancel the consumer and give back the jobs it prefetched but did not hand out."""
        if not connected:
            consumer.buffer.clear()  # the broker requeues them when it sees the connection gone
            return
        await self._quietly(consumer.queue.cancel(consumer.tag))
        buffered = [envelope for envelope in consumer.buffer if envelope.live]
        consumer.buffer.clear()
        jobs = sum(envelope.remaining for envelope in buffered)
        # An envelope partly handed out is settled when the last of those jobs is decided, or,
        # if that never comes, redelivered whole once its channel closes.
        await self._settle(topic, [envelope for envelope in buffered if envelope.give_back()])
        if jobs:
            logger.info("%s: gave %d prefetched jobs back", topic, jobs)
