"""Loading a corpus the way a migration would: rows written straight into the store's tables.

No API calls and no queue: a migration from another system writes rows in bulk, then runs
``chatd reindex`` to build the search index (timed separately, as the operator's "rebuild the
index" path). Ids are given explicitly, in the order the corpus streams them, so the store's
storage order is the corpus's. The counts are written as a reconciled store has them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from bench.scale.corpus import START, Corpus, Message
from chatd.jobs import format_time

_MESSAGE_ROW = "(id, chat_id, number, content, revision, created_at, updated_at)"


def _mysql_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _parents(corpus: Corpus, stamp: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    applications = [
        (a.id, a.token, f"app {a.id}", len(a.chats), stamp(START), stamp(START)) for a in corpus.applications
    ]
    chats = [(c.id, c.application_id, c.number, c.messages, stamp(START)) for c in corpus.chats]
    return applications, chats


def _message_rows(messages: Sequence[Message], stamp: Any) -> list[tuple[Any, ...]]:
    return [(m.id, m.chat_id, m.number, m.content, 1, stamp(m.created_at), stamp(m.created_at)) for m in messages]


def load_sqlite(path: str, corpus: Corpus, chunks: Iterable[list[Message]] | None = None) -> float:
    """Write the corpus into the (migrated) SQLite store at ``path``; seconds taken."""
    started = time.monotonic()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a bulk load re-runs from scratch if it fails
        for chunk in chunks if chunks is not None else corpus.messages():
            conn.execute("BEGIN")
            conn.executemany(
                f"INSERT INTO messages {_MESSAGE_ROW} VALUES (?, ?, ?, ?, ?, ?, ?)", _message_rows(chunk, format_time)
            )
            conn.execute("COMMIT")
        applications, chats = _parents(corpus, format_time)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO applications (id, token, name, chats_count, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            applications,
        )
        conn.executemany(
            "INSERT INTO chats (id, application_id, number, messages_count, created_at) VALUES (?, ?, ?, ?, ?)", chats
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return time.monotonic() - started


async def load_mysql(connection: Any, corpus: Corpus) -> float:
    """Write the corpus into the (migrated) MySQL store behind an aiomysql ``connection``; seconds taken."""
    started = time.monotonic()
    async with connection.cursor() as cursor:
        # Checked by the corpus itself: every (chat, number) is new. Skipping the checks per row
        # is what a bulk load does; the unique indexes are still built and still hold.
        await cursor.execute("SET SESSION unique_checks = 0")
        for chunk in corpus.messages(chunk=20_000):
            # pymysql folds executemany of one INSERT into multi-row statements of about 1 MB.
            await cursor.executemany(
                f"INSERT INTO messages {_MESSAGE_ROW} VALUES (%s, %s, %s, %s, %s, %s, %s)",
                _message_rows(chunk, _mysql_time),
            )
            await connection.commit()
        applications, chats = _parents(corpus, _mysql_time)
        await cursor.executemany(
            "INSERT INTO applications (id, token, name, chats_count, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            applications,
        )
        await cursor.executemany(
            "INSERT INTO chats (id, application_id, number, messages_count, created_at) VALUES (%s, %s, %s, %s, %s)",
            chats,
        )
        await connection.commit()
        await cursor.execute("SET SESSION unique_checks = 1")
    return time.monotonic() - started
