"""Edits on MySQL/MariaDB: the outbox an edit writes in its transaction, and the last-edit times.

Functions of a cursor, run inside the store's transactions (``chatd.backends.mysql_store``);
the tables are ``sql/mysql/0005_edit_outbox.sql``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiomysql

from chatd.backends.mysql_db import from_db, to_db
from chatd.domain import EditedMessage, OutboxEdits, SearchDocument

# The columns _edited reads: application, chat number, number, content, created, revision, updated.
_MESSAGE_COLUMNS = "c.application_id, c.number, m.number, m.content, m.created_at, m.revision, m.updated_at"


async def record_edit(
    cursor: aiomysql.Cursor, message_id: int, chat_id: int, number: int, revision: int, stamp: datetime
) -> None:
    """In the edit's transaction: an outbox row for the relay, and the message's last-edit time."""
    await cursor.execute("INSERT INTO edit_outbox (message_id, revision) VALUES (%s, %s)", (message_id, revision))
    await cursor.execute(
        "INSERT INTO message_edits (chat_id, number, updated_at) VALUES (%s, %s, %s)"
        " ON DUPLICATE KEY UPDATE updated_at = VALUES(updated_at)",
        (chat_id, number, stamp),
    )


async def edits_to_relay(cursor: aiomysql.Cursor, limit: int) -> OutboxEdits:
    await cursor.execute(
        f"SELECT o.id, {_MESSAGE_COLUMNS} FROM edit_outbox o"
        " LEFT JOIN messages m ON m.id = o.message_id LEFT JOIN chats c ON c.id = m.chat_id"
        " ORDER BY o.id LIMIT %s",
        (limit,),
    )
    rows = await cursor.fetchall()
    messages: dict[str, EditedMessage] = {}
    for row in rows:
        if row[1] is not None:  # a row whose message is gone has nothing to relay: forgotten with the rest
            edited = _edited(row[1:])
            messages[edited.document.doc_id] = edited
    return OutboxEdits([int(row[0]) for row in rows], list(messages.values()))


async def forget_relayed(cursor: aiomysql.Cursor, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), 1000):
        chunk = list(ids[start : start + 1000])
        await cursor.execute(f"DELETE FROM edit_outbox WHERE id IN ({','.join(['%s'] * len(chunk))})", chunk)


async def recent_edits(
    cursor: aiomysql.Cursor, application_id: int, chat_number: int, up_to: int, since: datetime, limit: int
) -> list[EditedMessage]:
    await cursor.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM chats c"
        " JOIN message_edits e ON e.chat_id = c.id"
        " JOIN messages m ON m.chat_id = e.chat_id AND m.number = e.number"
        " WHERE c.application_id = %s AND c.number = %s AND e.updated_at >= %s AND e.number <= %s"
        " ORDER BY e.updated_at DESC LIMIT %s",
        (application_id, chat_number, to_db(since), up_to, limit),
    )
    rows = await cursor.fetchall()
    return sorted((_edited(row) for row in rows), key=lambda edited: edited.document.message_number)


def _edited(row: Sequence[Any]) -> EditedMessage:
    application_id, chat_number, number, content, created_at, revision, updated_at = row
    document = SearchDocument(
        int(application_id), int(chat_number), int(number), content, from_db(created_at), int(revision)
    )
    return EditedMessage(document, from_db(updated_at))
