"""The SQL behind SqliteStore's sequences: what a backup records and a restore moves forward.

A sequence is the application ids (``APPLICATION_IDS``) or one number scope's counter. Its
highest value is the counter, or a stored row above it (a store loaded in bulk, or by hand).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime

from chatd.backends.sqlite_lists import chunks
from chatd.jobs import format_time, parse_time
from chatd.numbering import APPLICATION_IDS, SequenceState, merge_sequences

_CHAT_SCOPE = "'chats:' || application_id"
_MESSAGE_SCOPE = "'messages:' || c.application_id || ':' || c.number"


def sequences(conn: sqlite3.Connection) -> dict[str, SequenceState]:
    queries = (
        "SELECT 'reserved', scope, last_number FROM number_counters",
        f"SELECT 'stored', {_CHAT_SCOPE}, MAX(number) FROM chats GROUP BY application_id",
        f"SELECT 'stored', {_MESSAGE_SCOPE}, m.n FROM (SELECT chat_id, MAX(number) AS n FROM messages"
        " GROUP BY chat_id) m JOIN chats c ON c.id = m.chat_id",
        # AUTOINCREMENT's own record: ids of applications created and gone are never reused either.
        f"SELECT 'reserved', '{APPLICATION_IDS}', seq FROM sqlite_sequence WHERE name = 'applications'",
        f"SELECT 'stored', '{APPLICATION_IDS}', MAX(id) FROM applications",
    )
    return merge_sequences([row for query in queries for row in conn.execute(query)])


def taken_since(conn: sqlite3.Connection, since: datetime) -> dict[str, int]:
    stamp = format_time(since)  # fixed width, so text order is time order
    taken: dict[str, int] = {}
    queries = (
        f"SELECT {_CHAT_SCOPE}, COUNT(*) FROM chats WHERE created_at >= ? GROUP BY application_id",
        f"SELECT {_MESSAGE_SCOPE}, m.n FROM (SELECT chat_id, COUNT(*) AS n FROM messages WHERE created_at >= ?"
        " GROUP BY chat_id) m JOIN chats c ON c.id = m.chat_id",
        f"SELECT '{APPLICATION_IDS}', COUNT(*) FROM applications WHERE created_at >= ?",
    )
    for query in queries:
        for scope, count in conn.execute(query, (stamp,)):
            if count:
                taken[scope] = int(count)
    return taken


def newest_row_at(conn: sqlite3.Connection) -> datetime | None:
    # Fixed-width UTC text: the greatest text is the newest time.
    (newest,) = conn.execute(
        "SELECT MAX(t) FROM (SELECT MAX(created_at) AS t FROM messages UNION ALL"
        " SELECT MAX(created_at) FROM chats UNION ALL SELECT MAX(created_at) FROM applications)"
    ).fetchone()
    return None if newest is None else parse_time(newest)


def raise_sequences(conn: sqlite3.Connection, floors: Mapping[str, int]) -> None:
    counters = sorted((scope, value) for scope, value in floors.items() if scope != APPLICATION_IDS)
    for chunk in chunks(counters):
        conn.executemany(
            "INSERT INTO number_counters (scope, last_number) VALUES (?, ?)"
            " ON CONFLICT (scope) DO UPDATE SET last_number = MAX(last_number, excluded.last_number)",
            chunk,
        )
    if APPLICATION_IDS in floors:
        floor = floors[APPLICATION_IDS]
        moved = conn.execute(
            "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'applications'", (floor,)
        ).rowcount
        if not moved:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('applications', ?)", (floor,))
