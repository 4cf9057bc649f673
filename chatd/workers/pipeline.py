"""The background side of a process: every consumer, the indexer, the edit relay and the reconciler."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatd import jobs
from chatd.ports import Backends
from chatd.settings import Settings
from chatd.supervisor import Supervisor
from chatd.workers.consumer import BatchConsumer
from chatd.workers.edit_relay import Announce, EditRelay
from chatd.workers.indexer import Indexer
from chatd.workers.persist import ChatConsumer, MessageConsumer
from chatd.workers.reconciler import Reconciler


class JobsDeadLettered(RuntimeError):
    """``run_until_idle`` sent jobs to the dead-letter queue that its caller did not expect."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts
        super().__init__("jobs dead-lettered: " + ", ".join(f"{count} {topic}" for topic, count in counts.items()))


class Pipeline:
    """Builds the background loops from settings, and can drive them step by step in tests."""

    def __init__(
        self,
        backends: Backends,
        settings: Settings,
        forget_applications: Callable[[list[str]], Awaitable[None]],
        monotonic: Callable[[], float] = time.monotonic,
        announce: Announce | None = None,
    ):
        """``announce``: the live fan-out's, so that relayed edits are announced (None: not announced)."""
        self.backends = backends
        persist = {
            "batch_size": settings.worker_batch_size,
            "batch_wait": settings.worker_batch_wait_seconds,
            "max_attempts": settings.max_delivery_attempts,
        }
        self.chats = ChatConsumer(backends.queue, backends.store, **persist)
        self.messages = MessageConsumer(
            backends.queue, backends.store, max_index_backlog=settings.max_index_backlog, monotonic=monotonic, **persist
        )
        self.indexer = Indexer(
            backends.queue,
            backends.search,
            batch_size=settings.index_batch_size,
            batch_wait=settings.index_batch_wait_seconds,
            max_attempts=settings.max_delivery_attempts,
        )
        # Polled as often as the indexer batches: an edit is searchable about as soon as a new message.
        self.edit_relay = EditRelay(
            backends.store, backends.queue, announce, interval=settings.index_batch_wait_seconds
        )
        self.reconciler = Reconciler(
            backends.store, backends.lock, settings.reconcile_interval_seconds, forget_applications
        )

    def start(self, supervisor: Supervisor) -> None:
        supervisor.start("chat-consumer", self.chats.run)
        supervisor.start("message-consumer", self.messages.run)
        supervisor.start("indexer", self.indexer.run)
        supervisor.start("edit-relay", self.edit_relay.run)
        supervisor.start("reconciler", self.reconciler.run)

    async def run_until_idle(self, timeout: float = 30.0, *, expect_dead_letters: bool = False) -> None:
        """Process every queued job, in pipeline order, then reconcile counts once.

        For tests and tools: the same code as the background loops, driven deterministically.
        Raises JobsDeadLettered if any job went to a dead-letter queue meanwhile, unless the
        caller expects that (as arq's ``run_check`` raises ``FailedJobs``): a job lost to the
        dead letters would otherwise only show as something missing later, if at all.
        """
        consumers: tuple[BatchConsumer[Any], ...] = (self.chats, self.messages, self.indexer)
        dead_before = [consumer.dead_lettered for consumer in consumers]
        deadline = time.monotonic() + timeout
        while True:
            handled = await self.edit_relay.relay_once()
            for consumer in consumers:
                handled += await consumer.run_once()
            if handled == 0 and all([await self.backends.queue.depth(topic) == 0 for topic in jobs.TOPICS]):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("queues did not drain")
        await self.reconciler.reconcile_once()
        await self.backends.search.refresh()
        dead = {
            consumer.topic: consumer.dead_lettered - before
            for consumer, before in zip(consumers, dead_before)
            if consumer.dead_lettered > before
        }
        if dead and not expect_dead_letters:
            raise JobsDeadLettered(dead)
