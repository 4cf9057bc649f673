"""The background side of a process: every consumer, the indexer and the reconciler."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from chatd import jobs
from chatd.ports import Backends
from chatd.settings import Settings
from chatd.supervisor import Supervisor
from chatd.workers.indexer import Indexer
from chatd.workers.persist import ChatConsumer, MessageConsumer
from chatd.workers.reconciler import Reconciler


class Pipeline:
    """Builds the background loops from settings, and can drive them step by step in tests."""

    def __init__(
        self, backends: Backends, settings: Settings, forget_applications: Callable[[list[str]], Awaitable[None]]
    ):
        self.backends = backends
        persist = {
            "batch_size": settings.worker_batch_size,
            "batch_wait": settings.worker_batch_wait_seconds,
            "max_attempts": settings.max_delivery_attempts,
        }
        self.chats = ChatConsumer(backends.queue, backends.store, **persist)
        self.messages = MessageConsumer(
            backends.queue, backends.store, max_index_backlog=settings.max_index_backlog, **persist
        )
        self.indexer = Indexer(
            backends.queue,
            backends.search,
            batch_size=settings.index_batch_size,
            batch_wait=settings.index_batch_wait_seconds,
            max_attempts=settings.max_delivery_attempts,
        )
        self.reconciler = Reconciler(
            backends.store, backends.lock, settings.reconcile_interval_seconds, forget_applications
        )

    def start(self, supervisor: Supervisor) -> None:
        supervisor.start("chat-consumer", self.chats.run)
        supervisor.start("message-consumer", self.messages.run)
        supervisor.start("indexer", self.indexer.run)
        supervisor.start("reconciler", self.reconciler.run)

    async def run_until_idle(self, timeout: float = 30.0) -> None:
        """Process every queued job, in pipeline order, then reconcile counts once.

        For tests and tools: the same code as the background loops, driven deterministically.
        """
        deadline = time.monotonic() + timeout
        while True:
            handled = 0
            for consumer in (self.chats, self.messages, self.indexer):
                handled += await consumer.run_once()
            if handled == 0 and all([await self.backends.queue.depth(topic) == 0 for topic in jobs.TOPICS]):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("queues did not drain")
        await self.reconciler.reconcile_once()
        await self.backends.search.refresh()
