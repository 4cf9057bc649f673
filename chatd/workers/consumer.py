"""The shape every queue consumer shares: receive a batch, handle it, then ack.

Acks come only after the work is committed. A backend outage (BackendUnavailable, whatever
the backend and its cause) gives the batch back without spending an attempt of any of its jobs,
and waits in the consumer's own loop; any other failure is retried job by job, so one poison job
cannot hold up the others, and a job that keeps failing goes to the dead-letter queue. So a job
answered 201 never reaches the dead letters because a disk was full or a lock was busy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from chatd import metrics
from chatd.errors import BackendUnavailable
from chatd.jobs import PoisonJob
from chatd.ports import Delivery, Queue
from chatd.supervisor import sleep_unless_stopping

logger = logging.getLogger(__name__)

Job = TypeVar("Job")

# The longest a consumer waits before trying a backend again after an outage. About
# aio-pika's reconnect interval: shorter only spins, longer leaves its prefetched jobs idle.
OUTAGE_RETRY_SECONDS = 1.0


@dataclass
class Outcome:
    """What ``handle`` could not finish: jobs to try again later, and jobs that never will be.

    ``retry`` counts this delivery as one of the job's attempts; ``later`` does not (a backend
    refused the job for a passing reason: overloaded, a write block on a full disk).
    """

    retry: list[Delivery] = field(default_factory=list)
    dead: list[Delivery] = field(default_factory=list)
    later: list[Delivery] = field(default_factory=list)


@dataclass
class Tally:
    """Jobs a consumer acked, gave back to be delivered again, and sent to the dead letters."""

    done: int = 0
    retried: int = 0
    dead: int = 0

    def copy(self) -> Tally:
        return Tally(self.done, self.retried, self.dead)

    def log_batch(self, topic: str, size: int, seconds: float, handled: bool, before: Tally) -> None:
        """One JSON line per batch: what came in, how long it took, and what became of it."""
        done, retried, dead = self.done - before.done, self.retried - before.retried, self.dead - before.dead
        outcome = "outage" if not handled else "done" if done == size else "partial"
        logger.info(
            "batch",
            extra={
                "topic": topic,
                "size": size,
                "duration_ms": round(seconds * 1000, 2),
                "outcome": outcome,
                "done": done,
                "retried": retried,
                "dead": dead,
            },
        )


class BatchConsumer(Generic[Job]):
    topic: str

    def __init__(self, queue: Queue, *, batch_size: int, batch_wait: float, max_attempts: int):
        self.queue = queue
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.max_attempts = max_attempts
        self._outage_backoff = 0.2
        # What this consumer settled since it started: logged per batch and at shutdown.
        self.tally = Tally()
        # Jobs this consumer sent to the dead-letter queue, so that a test driver can tell.
        self.dead_lettered = 0

    def decode(self, body: bytes) -> Job:
        raise NotImplementedError

    async def handle(self, batch: Sequence[tuple[Delivery, Job]]) -> Outcome:
        """Do the work of a batch and commit it; anything not in the outcome will be acked."""
        raise NotImplementedError

    async def ready_for_more(self) -> bool:
        """False while downstream is too far behind to take more work (back-pressure)."""
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; the batch in hand is always finished first.

        An outage met while asking for work (the broker restarting) is waited out here, at
        ``OUTAGE_RETRY_SECONDS``, not raised to the supervisor: its back-off grows to half a
        minute, and meanwhile the broker's client, reconnected by itself, refills this
        consumer's prefetch buffer with jobs nobody handles. Other workers would store the
        messages after them, and a live stream waiting on that hole skips it in the end.
        """
        while not stopping.is_set():
            try:
                if not await self.ready_for_more():
                    await sleep_unless_stopping(stopping, 0.5)
                    continue
                deliveries = await self.queue.receive(self.topic, self.batch_size, self.batch_wait)
            except BackendUnavailable as exc:
                logger.warning("%s: cannot receive (%s); trying again in %.0fs", self.topic, exc, OUTAGE_RETRY_SECONDS)
                metrics.backend_error(exc)
                await sleep_unless_stopping(stopping, OUTAGE_RETRY_SECONDS)
                continue
            try:
                handled = not deliveries or await self.process(deliveries)
            except BackendUnavailable as exc:
                # Settling failed (the embedded queue shares the store's full disk, say): the jobs
                # come back when their lease runs out or the broker sees the channel gone.
                logger.warning(
                    "%s: cannot settle a batch (%s); trying again in %.0fs", self.topic, exc, OUTAGE_RETRY_SECONDS
                )
                metrics.backend_error(exc)
                await sleep_unless_stopping(stopping, OUTAGE_RETRY_SECONDS)
                continue
            if not handled:
                await sleep_unless_stopping(stopping, self._outage_backoff)

    async def run_once(self, max_wait: float = 0.0) -> int:
        """Process one batch if any is waiting; return how many jobs it had (for tests and tools)."""
        deliveries = await self.queue.receive(self.topic, self.batch_size, max_wait)
        if deliveries:
            await self.process(deliveries)
        return len(deliveries)

    async def process(self, deliveries: Sequence[Delivery]) -> bool:
        """Handle and settle a batch; False if a backend was down and the batch was given back."""
        started, before = time.perf_counter(), self.tally.copy()
        handled = await self._process(deliveries)
        seconds = time.perf_counter() - started
        metrics.BATCH_SIZE.labels(self.topic).observe(len(deliveries))
        metrics.BATCH_SECONDS.labels(self.topic).observe(seconds)
        self.tally.log_batch(self.topic, len(deliveries), seconds, handled, before)
        return handled

    async def _process(self, deliveries: Sequence[Delivery]) -> bool:
        batch, poison = [], []
        for delivery in deliveries:
            try:
                batch.append((delivery, self.decode(delivery.body)))
            except PoisonJob as exc:
                logger.error("%s: undecodable job: %s", self.topic, exc)
                poison.append(delivery)
        if poison:
            await self._bury(poison, "undecodable")
        return await self._process_decoded(batch) if batch else True

    async def _process_decoded(self, batch: Sequence[tuple[Delivery, Job]]) -> bool:
        try:
            outcome = await self.handle(batch)
        except BackendUnavailable as exc:
            logger.warning("%s: backend unavailable (%s); giving %d jobs back", self.topic, exc, len(batch))
            metrics.backend_error(exc)
            await self._release([delivery for delivery, _ in batch])
            # Capped low: while this consumer sleeps, the jobs prefetched for it wait too.
            self._outage_backoff = min(self._outage_backoff * 2, OUTAGE_RETRY_SECONDS)
            return False
        except Exception:
            if len(batch) == 1:
                await self._failed(batch[0][0])
                return True
            logger.exception("%s: batch of %d failed; retrying job by job", self.topic, len(batch))
            for position, item in enumerate(batch):
                if not await self._process_decoded([item]):
                    # An outage: give back the jobs not tried yet too, so none stays held.
                    rest = [delivery for delivery, _ in batch[position + 1 :]]
                    if rest:
                        await self._release(rest)
                    return False
            return True
        self._outage_backoff = 0.2
        unsettled = {id(d) for d in (*outcome.retry, *outcome.dead, *outcome.later)}
        done = [delivery for delivery, _ in batch if id(delivery) not in unsettled]
        if done:
            await self.queue.ack(self.topic, done)
            metrics.JOBS_DONE.labels(self.topic).inc(len(done))
            self.tally.done += len(done)
        if outcome.retry:
            await self._retry(outcome.retry)
        if outcome.later:
            await self._release(outcome.later)
        if outcome.dead:
            await self._bury(outcome.dead, "cannot be processed")
        return True

    async def _failed(self, delivery: Delivery) -> None:
        logger.exception("%s: job failed (delivery %d of at most %d)", self.topic, delivery.attempts, self.max_attempts)
        if delivery.attempts >= self.max_attempts:
            await self._bury([delivery], "kept failing")
        else:
            await self._retry([delivery])

    async def _retry(self, deliveries: Sequence[Delivery]) -> None:
        await self.queue.retry(self.topic, deliveries)
        metrics.JOBS_RETRIED.labels(self.topic).inc(len(deliveries))
        self.tally.retried += len(deliveries)

    async def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Give jobs back without spending an attempt; if even that fails, they come back anyway."""
        try:
            await self.queue.release(self.topic, deliveries)
        except BackendUnavailable as exc:
            # Left unsettled: the embedded queue's lease runs out, the broker redelivers what a
            # lost channel held. Either may count that delivery; nothing is lost.
            logger.warning(
                "%s: could not give %d jobs back (%s); they return on their own", self.topic, len(deliveries), exc
            )
            metrics.backend_error(exc)
            return
        metrics.JOBS_RETRIED.labels(self.topic).inc(len(deliveries))
        self.tally.retried += len(deliveries)

    async def _bury(self, deliveries: Sequence[Delivery], why: str) -> None:
        logger.error("%s: %d jobs to the dead-letter queue: %s", self.topic, len(deliveries), why)
        metrics.JOBS_DEAD.labels(self.topic).inc(len(deliveries))
        await self.queue.dead_letter(self.topic, deliveries)
        self.dead_lettered += len(deliveries)
        self.tally.dead += len(deliveries)
