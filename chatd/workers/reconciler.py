"""The reconciler: folds pending count changes into chats_count and messages_count."""

from __future__ import annotations

import asyncio
import logging
import secrets

from chatd.ports import Lock
from chatd.service import ChatService
from chatd.supervisor import sleep_unless_stopping

logger = logging.getLogger(__name__)

LOCK_NAME = "chatd:reconciler"


class Reconciler:
    """Runs every ``interval`` seconds in whichever process holds the lock.

    The fold itself is one store transaction, so a reconciler that dies mid-run applies
    nothing, and the next run (here or in another process, once the lease expires)
    applies everything exactly once.
    """

    def __init__(self, service: ChatService, lock: Lock, interval: float):
        self.service = service
        self.lock = lock
        self.interval = interval
        self.owner = secrets.token_hex(8)
        self.batch = 10_000

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.reconcile_once()
            await sleep_unless_stopping(stopping, self.interval)

    async def reconcile_once(self) -> bool:
        """One run under the lock; False if another process holds it."""
        if not await self.lock.acquire(LOCK_NAME, self.owner, ttl_seconds=max(30.0, self.interval * 3)):
            return False
        try:
            while True:
                folded = await self.service.store.reconcile_counts(self.batch)
                await self.service.forget_applications(folded.application_tokens)
                if folded.deltas < self.batch:
                    break
        finally:
            await self.lock.release(LOCK_NAME, self.owner)
        return True
