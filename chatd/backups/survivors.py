"""What outlived the store: queued jobs and indexed documents, replayed into a restored store.

A message acked after the backup is still somewhere when only the store was lost: its job in the
messages queue (not stored yet), its index job in the index queue (stored, not indexed yet), or
its document in the search index (stored and indexed). A restore replays all of them into the
restored store, through the store's own idempotent writes (``save_chats``, ``save_messages``):
a message the backup already holds is left as it is, one it lacks is stored again with the number
its client holds. So on the production set, where the queues and the index live on other servers,
losing the store loses no acked message of an application the backup knows.

What cannot come back: applications created after the backup (their token was only in the store;
their jobs and documents are counted as orphaned and left out, and the ids and numbers they used
are moved past, ``fence``); chats created after the backup that have no message in any survivor;
and edits made after the backup, where the restored message keeps its older text (a message stored
from an index document has its edited text, as revision 1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from chatd import jobs
from chatd.domain import ChatJob, MessageJob, NumberScope, SearchDocument
from chatd.numbering import APPLICATION_IDS
from chatd.ports import Delivery, Queue, SearchIndex, Store

logger = logging.getLogger(__name__)

BATCH = 1_000
PAGE = 5_000
# A queue that hands out nothing for this long, while it still counts jobs, has another consumer:
# a chatd worker still running (a restore needs every chatd process stopped).
IDLE_SECONDS = 5.0


@dataclass
class Survivors:
    """What the replay saw and did."""

    # Each sequence's highest value in any job or document seen (also of unknown applications).
    highest: dict[str, int] = field(default_factory=dict)
    jobs: int = 0
    documents: int = 0
    # Messages the restored store did not have, stored from a job or a document.
    replayed: int = 0
    recovered: int = 0
    # Messages of applications the restored store does not know: not stored.
    orphaned: int = 0
    poison: int = 0
    left_in_queues: int = 0

    def saw(self, application_id: int, chat_number: int, message_number: int | None = None) -> None:
        self._keep(APPLICATION_IDS, application_id)
        self._keep(NumberScope(application_id).key, chat_number)
        if message_number is not None:
            self._keep(NumberScope(application_id, chat_number).key, message_number)

    def _keep(self, key: str, value: int) -> None:
        if value > self.highest.get(key, 0):
            self.highest[key] = value


async def replay_queued(store: Store, queue: Queue, survivors: Survivors, search: SearchIndex | None = None) -> None:
    """Store every queued chat, message and index job, and take them off their queues.

    With ``search``, each replayed message is also indexed before its job goes (a promotion keeps
    its search index; a restore rebuilds it afterwards and passes none).
    """
    before = await store.count_messages()
    for topic in (jobs.CHATS, jobs.MESSAGES, jobs.INDEX):
        idle_since = time.monotonic()
        while True:
            deliveries = await queue.receive(topic, max_batch=BATCH, max_wait=0.2)
            if deliveries:
                await _replay(store, queue, topic, deliveries, survivors, search)
                idle_since = time.monotonic()
                continue
            depth = await queue.depth(topic)
            if depth == 0:
                break
            if time.monotonic() - idle_since > IDLE_SECONDS:
                logger.warning("restore: %d %s jobs held by another consumer were not replayed", depth, topic)
                survivors.left_in_queues += depth
                break
            await asyncio.sleep(0.1)
    survivors.replayed += await store.count_messages() - before


async def _replay(
    store: Store,
    queue: Queue,
    topic: str,
    deliveries: Sequence[Delivery],
    survivors: Survivors,
    search: SearchIndex | None,
) -> None:
    good: list[Delivery] = []
    chats: list[ChatJob] = []
    messages: list[MessageJob] = []
    for delivery in deliveries:
        try:
            if topic == jobs.CHATS:
                chat = jobs.decode_chat(delivery.body)
                survivors.saw(chat.application_id, chat.chat_number)
                chats.append(chat)
            else:
                if topic == jobs.MESSAGES:
                    message = jobs.decode_message(delivery.body)
                else:
                    message = _as_job(jobs.decode_document(delivery.body))
                survivors.saw(message.application_id, message.chat_number, message.message_number)
                messages.append(message)
        except jobs.PoisonJob:
            survivors.poison += 1
            await queue.dead_letter(topic, [delivery])
            continue
        good.append(delivery)
    survivors.jobs += len(good)
    if chats:
        await store.save_chats(chats)
    if messages:
        stored = await store.save_messages(messages)
        survivors.orphaned += len(messages) - len(stored)
        if search is not None:
            await search.index(stored)  # each message as stored: an edited one keeps its edit
    await queue.ack(topic, good)


async def recover_from_index(store: Store, search: SearchIndex, survivors: Survivors, page: int = PAGE) -> None:
    """Store every indexed message the restored store lacks, walking the whole index."""
    after: tuple[int, int, int] | None = None
    while documents := await search.documents_after(after, page):
        survivors.documents += len(documents)
        for doc in documents:
            survivors.saw(doc.application_id, doc.chat_number, doc.message_number)
        missing = await _missing(store, documents)
        if missing:
            stored = await store.save_messages([_as_job(doc) for doc in missing])
            survivors.recovered += len(stored)
            survivors.orphaned += len(missing) - len(stored)
        last = documents[-1]
        after = (last.application_id, last.chat_number, last.message_number)


async def _missing(store: Store, documents: Sequence[SearchDocument]) -> list[SearchDocument]:
    """The documents whose message the store does not hold (read a chat at a time, by number)."""
    by_chat: dict[tuple[int, int], list[SearchDocument]] = defaultdict(list)
    for doc in documents:
        by_chat[(doc.application_id, doc.chat_number)].append(doc)
    missing: list[SearchDocument] = []
    for (application_id, chat_number), docs in by_chat.items():
        wanted = {doc.message_number for doc in docs}
        low, high = min(wanted), max(wanted)
        stored: set[int] = set()
        after = low - 1
        while after < high:
            messages = await store.list_messages_after(application_id, chat_number, after, BATCH)
            stored.update(message.number for message in messages if message.number <= high)
            if len(messages) < BATCH:
                break
            after = messages[-1].number
        missing.extend(doc for doc in docs if doc.message_number not in stored)
    return missing


def _as_job(doc: SearchDocument) -> MessageJob:
    return MessageJob(doc.application_id, doc.chat_number, doc.message_number, doc.content, doc.created_at)
