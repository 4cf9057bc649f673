"""The reconciler: folds pending count changes into chats_count and messages_count."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from chatd import metrics
from chatd.ports import Lock, Store
from chatd.supervisor import sleep_unless_stopping

logger = logging.getLogger(__name__)

LOCK_NAME = "chatd:reconciler"


class Reconciler:
    """Runs every ``interval`` seconds in whichever process holds the lock.

    The fold itself is one store transaction, so a reconciler that dies mid-run applies
    nothing, and the next run (here or in another process, once the lease expires)
    applies everything exactly once.
    """

    def __init__(
        self,
        store: Store,
        lock: Lock,
        interval: float,
        forget_applications: Callable[[list[str]], Awaitable[None]],
    ):
        self.store = store
        self.lock = lock
        # Cached applications whose chats_count a fold changed are dropped from the cache.
        self.forget_applications = forget_applications
        self.interval = interval
        self.owner = secrets.token_hex(8)
        self.batch = 10_000
        self.runs = 0  # finished here, for the shutdown report

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.reconcile_once()
            await sleep_unless_stopping(stopping, self.interval)

    async def reconcile_once(self) -> bool:
        """One run under the lock; False if another process holds it."""
        try:
            if not await self.lock.acquire(LOCK_NAME, self.owner, ttl_seconds=max(30.0, self.interval * 3)):
                metrics.RECONCILER_RUNS.labels("skipped").inc()
                return False
            started = time.perf_counter()
            try:
                while True:
                    folded = await self.store.reconcile_counts(self.batch)
                    await self.forget_applications(folded.application_tokens)
                    if folded.deltas < self.batch:
                        break
            finally:
                await self.lock.release(LOCK_NAME, self.owner)
        except Exception:
            metrics.RECONCILER_RUNS.labels("failed").inc()
            raise
        metrics.RECONCILER_RUNS.labels("done").inc()
        metrics.RECONCILER_SECONDS.observe(time.perf_counter() - started)
        metrics.RECONCILER_LAST_SUCCESS.set_to_current_time()
        self.runs += 1
        return True
