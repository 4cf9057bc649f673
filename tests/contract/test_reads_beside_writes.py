"""Reads never wait for a write in progress (issue 8, item 3), on SQLite and on MySQL.

A worker's batch insert holds the store's write transaction (SQLite's one writer, InnoDB's
row locks) for as long as the batch takes. Each test holds such a transaction open, a batch
that does not end until the test says so, and reads meanwhile: GET of a message and of an
application, a cursor page, a search. They must answer while the write is still open; a
read queued behind the writer would wait until the bound and fail.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chatd.ports import Backends
from tests.conftest import Namespace, mysql_connection
from tests.factories import WHEN, chat_job, document, message_job

BOUND = 10.0  # a read that waited for the writer would wait this long, then fail


@asynccontextmanager
async def write_in_progress(namespace: Namespace, backends: Backends, chat_id: int) -> AsyncIterator[None]:
    """A write transaction that has written rows and stays open inside the block."""
    if namespace.backend_set == "embedded":
        release = threading.Event()
        entered = [threading.Event(), threading.Event()]

        def batch(statement: str, started: threading.Event):  # type: ignore[no-untyped-def]
            def write(conn):  # type: ignore[no-untyped-def]
                conn.execute(statement)
                started.set()
                release.wait(BOUND * 3)

            return write

        # The store's writer and the search file's writer, each inside a transaction that wrote.
        holding = [
            asyncio.create_task(backends.store.db.transaction(batch(  # type: ignore[attr-defined]
                f"INSERT INTO count_deltas (application_id, chat_id, delta) VALUES (1, {chat_id}, 0)", entered[0]
            ))),
            asyncio.create_task(backends.search.db.transaction(batch(  # type: ignore[attr-defined]
                "INSERT OR REPLACE INTO search_meta VALUES ('held', 'by the test')", entered[1]
            ))),
        ]  # fmt: skip
        for started in entered:
            assert await asyncio.to_thread(started.wait, BOUND)
        try:
            yield
        finally:
            release.set()
            await asyncio.gather(*holding)
        return
    async with mysql_connection(namespace.name) as conn, conn.cursor() as cursor:
        await conn.autocommit(False)
        await cursor.execute("SELECT id FROM chats WHERE id = %s FOR UPDATE", (chat_id,))
        await cursor.execute(
            "INSERT INTO messages (chat_id, number, content, revision, created_at, updated_at)"
            " VALUES (%s, 99, 'in flight', 1, NOW(3), NOW(3))",
            (chat_id,),
        )
        try:
            yield
        finally:
            await conn.rollback()


async def test_reads_answer_while_a_batch_write_is_open(namespace: Namespace, backends: Backends) -> None:
    store = backends.store
    application = await store.create_application("t" * 32, "app", WHEN)
    await store.save_chats([chat_job(application.id, 1)])
    await store.save_messages([message_job(application.id, 1, n, f"hello {n}") for n in range(1, 6)])
    await backends.search.index([document(application.id, 1, n, f"hello {n}") for n in range(1, 6)])
    await backends.search.refresh()

    async with write_in_progress(namespace, backends, chat_id=await _chat_id(namespace, backends, application.id)):

        async def reads() -> None:
            message = await store.get_message(application.id, 1, 3)
            assert message is not None and message.content == "hello 3"
            assert (await store.get_application("t" * 32)) is not None
            assert [m.number for m in await store.list_messages_after(application.id, 1, 2, 2)] == [3, 4]
            assert (await backends.search.search(application.id, 1, "hello", 1, 10)).total == 5

        await asyncio.wait_for(reads(), BOUND)
    assert (await store.get_message(application.id, 1, 99)) is None  # MySQL's write rolled back


async def _chat_id(namespace: Namespace, backends: Backends, application_id: int) -> int:
    if namespace.backend_set == "embedded":
        row = await backends.store.db.read(  # type: ignore[attr-defined]
            lambda conn: conn.execute(
                "SELECT id FROM chats WHERE application_id = ? AND number = 1", (application_id,)
            ).fetchone()
        )
        return int(row[0])
    async with mysql_connection(namespace.name) as conn, conn.cursor() as cursor:
        await cursor.execute("SELECT id FROM chats WHERE application_id = %s AND number = 1", (application_id,))
        (chat_id,) = await cursor.fetchone()
        return int(chat_id)
