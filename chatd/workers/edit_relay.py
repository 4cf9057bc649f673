"""The edit relay: from the store's outbox to the index queue and the live fan-out.

An edit commits its new text and an outbox row in one transaction (``Store.update_message``).
This loop reads the oldest rows, publishes each edited message's index job (returning only
once the queue confirmed it), announces the edits, and only then deletes the rows. A publish
that fails (the broker down) leaves the rows where they are for the next pass: an edit that
committed reaches the search index once the queue is back, as a creation does.

Delivery is at least once: a relay that dies between the publish and the delete, or two
worker processes relaying the same rows, publish a message twice. That is harmless: the
indexer keeps the highest revision it has seen, and live subscribers are sent an edit only if
it is newer than the one they last got for that message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from chatd import jobs, metrics
from chatd.errors import BackendUnavailable
from chatd.live import events
from chatd.ports import Queue, Store
from chatd.supervisor import sleep_unless_stopping

logger = logging.getLogger(__name__)

Announce = Callable[[Sequence[events.LiveEvent]], None]
# After an outage the next pass comes soon, then later each time, up to this.
MAX_OUTAGE_WAIT = 5.0


class EditRelay:
    """Relays the edit outbox every ``interval`` seconds (at once while there is more)."""

    def __init__(
        self, store: Store, queue: Queue, announce: Announce | None, *, interval: float, batch_size: int = 500
    ):
        self.store = store
        self.queue = queue
        self.announce = announce
        self.interval = interval
        self.batch_size = batch_size
        self.relayed = 0  # outbox rows relayed by this process

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until ``stopping``; an outage is waited out here, not raised as a crash."""
        outage_wait = self.interval
        while not stopping.is_set():
            try:
                handled = await self.relay_once()
            except BackendUnavailable as exc:
                logger.warning("edit relay: backend unavailable (%s); trying again in %.1f s", exc, outage_wait)
                metrics.backend_error(exc)
                await sleep_unless_stopping(stopping, outage_wait)
                outage_wait = min(outage_wait * 2, MAX_OUTAGE_WAIT)
                continue
            outage_wait = self.interval
            if handled < self.batch_size:
                await sleep_unless_stopping(stopping, self.interval)

    async def relay_once(self) -> int:
        """Relay the oldest ``batch_size`` outbox rows; return how many rows were relayed."""
        pending = await self.store.edits_to_relay(self.batch_size)
        if not pending.ids:
            return 0
        if pending.messages:
            # Confirmed before the rows go: a publish that raises leaves them for the next pass.
            await self.queue.publish(jobs.INDEX, [jobs.encode_document(edit.document) for edit in pending.messages])
            if self.announce is not None:
                self.announce([events.message_updated(edit.document, edit.updated_at) for edit in pending.messages])
        await self.store.forget_relayed_edits(pending.ids)
        self.relayed += len(pending.ids)
        return len(pending.ids)
