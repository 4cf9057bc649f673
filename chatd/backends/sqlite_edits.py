"""Edits on SQLite: the outbox an edit writes in its transaction, and the last-edit times.

Functions of a connection, called inside the store's transactions and reads
(``chatd.backends.sqlite_store``); the tables are ``sql/sqlite/0003_edit_outbox.sql``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from chatd.backends.sqlite_lists import chunks, marks
from chatd.domain import EditedMessage, OutboxEdits, SearchDocument
from chatd.jobs import format_time, parse_time

# The columns _edited reads: application, chat number, number, content, created, revision, updated.
_MESSAGE_COLUMNS = "c.application_id, c.number, m.number, m.content, m.created_at, m.revision, m.updated_at"


def record_edit(
    conn: sqlite3.Connection, message_id: int, chat_id: int, number: int, revision: int, stamp: str
) -> None:
    """In the edit's transaction: an outbox row for the relay, and the message's last-edit time."""
    conn.execute("INSERT INTO edit_outbox (message_id, revision) VALUES (?, ?)", (message_id, revision))
    conn.execute(
        "INSERT INTO message_edits (chat_id, number, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (chat_id, number) DO UPDATE SET updated_at = excluded.updated_at",
        (chat_id, number, stamp),
    )


def edits_to_relay(conn: sqlite3.Connection, limit: int) -> OutboxEdits:
    rows = conn.execute(
        f"SELECT o.id, {_MESSAGE_COLUMNS} FROM edit_outbox o"
        " LEFT JOIN messages m ON m.id = o.message_id LEFT JOIN chats c ON c.id = m.chat_id"
        " ORDER BY o.id LIMIT ?",
        (limit,),
    ).fetchall()
    messages: dict[str, EditedMessage] = {}
    for row in rows:
        if row[1] is not None:  # a row whose message is gone has nothing to relay: forgotten with the rest
            edited = _edited(row[1:])
            messages[edited.document.doc_id] = edited
    return OutboxEdits([int(row[0]) for row in rows], list(messages.values()))


def forget_relayed(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    for chunk in chunks(ids):
        conn.execute(f"DELETE FROM edit_outbox WHERE id IN ({marks(len(chunk))})", tuple(chunk))


def recent_edits(
    conn: sqlite3.Connection, application_id: int, chat_number: int, up_to: int, since: datetime, limit: int
) -> list[EditedMessage]:
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM chats c"
        " JOIN message_edits e ON e.chat_id = c.id"
        " JOIN messages m ON m.chat_id = e.chat_id AND m.number = e.number"
        " WHERE c.application_id = ? AND c.number = ? AND e.updated_at >= ? AND e.number <= ?"
        " ORDER BY e.updated_at DESC LIMIT ?",
        (application_id, chat_number, format_time(since), up_to, limit),
    ).fetchall()
    return sorted((_edited(row) for row in rows), key=lambda edited: edited.document.message_number)


def _edited(row: Sequence[Any]) -> EditedMessage:
    application_id, chat_number, number, content, created_at, revision, updated_at = row
    document = SearchDocument(application_id, chat_number, number, content, parse_time(created_at), revision)
    return EditedMessage(document, parse_time(updated_at))
