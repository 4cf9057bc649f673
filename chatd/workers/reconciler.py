"""The reconciler: folds pending count changes into chats_count and messages_count, and sweeps
expired idempotency keys."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from chatd import metrics
from chatd.errors import BackendUnavailable
from chatd.ports import Lock, Store
from chatd.supervisor import sleep_unless_stopping

logger = logging.getLogger(__name__)

LOCK_NAME = "chatd:reconciler"
# After an outage the next run comes sooner than the interval, then later each time, up to it.
FIRST_OUTAGE_WAIT = 0.5


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
        self.clock: Callable[[], float] = time.time  # seconds since the epoch, for key expiry

    async def run(self, stopping: asyncio.Event) -> None:
        """Reconcile every ``interval`` until ``stopping``; an outage is waited out here.

        Raised to the supervisor, it would be logged as a crash with a stack trace and its
        back-off would grow past the interval; a store or lock that cannot answer now is no bug.
        """
        outage_wait = FIRST_OUTAGE_WAIT
        while not stopping.is_set():
            try:
                await self.reconcile_once()
            except BackendUnavailable as exc:
                wait = min(outage_wait, self.interval)
                logger.warning("reconciler: backend unavailable (%s); trying again in %.1f s", exc, wait)
                metrics.backend_error(exc)
                outage_wait = wait * 2
                await sleep_unless_stopping(stopping, wait)
                continue
            outage_wait = FIRST_OUTAGE_WAIT
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
                # Expired idempotency keys, a batch a run: each is one small row (no job, no content).
                await self.store.forget_idempotency_keys(self.clock(), self.batch)
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
