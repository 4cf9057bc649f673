"""The SQL behind MysqlStore's sequences: what a backup records and a restore moves forward.

A sequence is the application ids (``APPLICATION_IDS``) or one number scope's counter. Its
highest value is the counter, or a stored row above it (a store loaded in bulk, or by hand).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import aiomysql

from chatd.backends.mysql_db import from_db, to_db
from chatd.numbering import APPLICATION_IDS, SequenceState, merge_sequences

_CHAT_SCOPE = "CONCAT('chats:', application_id)"
_MESSAGE_SCOPE = "CONCAT('messages:', c.application_id, ':', c.number)"
# Rows per statement when counters are raised: well inside max_allowed_packet.
_CHUNK = 1_000


async def sequences(cursor: aiomysql.Cursor) -> dict[str, SequenceState]:
    queries = (
        "SELECT 'reserved', scope, last_number FROM number_counters",
        f"SELECT 'stored', {_CHAT_SCOPE}, MAX(number) FROM chats GROUP BY application_id",
        # MAX per chat reads the (chat_id, number) index, one entry per chat.
        f"SELECT 'stored', {_MESSAGE_SCOPE}, m.n FROM (SELECT chat_id, MAX(number) AS n FROM messages"
        " GROUP BY chat_id) m JOIN chats c ON c.id = m.chat_id",
        f"SELECT 'stored', '{APPLICATION_IDS}', MAX(id) FROM applications",
        # InnoDB's own counter: ids burnt by rolled-back inserts are not reused either.
        f"SELECT 'reserved', '{APPLICATION_IDS}', AUTO_INCREMENT - 1 FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name = 'applications'",
    )
    found: list[tuple[str, str, int | None]] = []
    for query in queries:
        await cursor.execute(query)
        found.extend((which, _text(key), value) for which, key, value in await cursor.fetchall())
    return merge_sequences(found)


async def taken_since(cursor: aiomysql.Cursor, since: datetime) -> dict[str, int]:
    stamp = to_db(since)
    taken: dict[str, int] = {}
    queries = (
        f"SELECT {_CHAT_SCOPE}, COUNT(*) FROM chats WHERE created_at >= %s GROUP BY application_id",
        f"SELECT {_MESSAGE_SCOPE}, m.n FROM (SELECT chat_id, COUNT(*) AS n FROM messages WHERE created_at >= %s"
        " GROUP BY chat_id) m JOIN chats c ON c.id = m.chat_id",
        f"SELECT '{APPLICATION_IDS}', COUNT(*) FROM applications WHERE created_at >= %s",
    )
    for query in queries:
        await cursor.execute(query, (stamp,))
        for scope, count in await cursor.fetchall():
            if count:
                taken[_text(scope)] = int(count)
    return taken


async def newest_row_at(cursor: aiomysql.Cursor) -> datetime | None:
    await cursor.execute(
        "SELECT MAX(t) FROM (SELECT MAX(created_at) AS t FROM messages UNION ALL"
        " SELECT MAX(created_at) FROM chats UNION ALL SELECT MAX(created_at) FROM applications) AS newest"
    )
    row = await cursor.fetchone()
    return from_db(row[0]) if row and row[0] is not None else None


async def raise_sequences(cursor: aiomysql.Cursor, floors: Mapping[str, int]) -> None:
    counters = sorted((scope, value) for scope, value in floors.items() if scope != APPLICATION_IDS)
    for start in range(0, len(counters), _CHUNK):
        chunk = counters[start : start + _CHUNK]
        pairs = [value for row in chunk for value in row]
        # CASE rather than VALUES(), as in mysql_numbers: deprecated on MySQL 8, and no alias on MariaDB.
        await cursor.execute(
            f"INSERT INTO number_counters (scope, last_number) VALUES {', '.join(['(%s, %s)'] * len(chunk))}"
            f" ON DUPLICATE KEY UPDATE last_number = GREATEST(last_number, CASE scope"
            f" {' '.join(['WHEN %s THEN %s'] * len(chunk))} END)",
            pairs * 2,
        )
    if APPLICATION_IDS in floors:
        # Only ever forward: InnoDB would lower AUTO_INCREMENT to any value above the highest id
        # (reusing ids burnt by rolled-back inserts). Kept across restarts since MariaDB 10.2.4
        # and MySQL 8. DDL: it commits.
        await cursor.execute(
            "SELECT AUTO_INCREMENT FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name = 'applications'"
        )
        row = await cursor.fetchone()
        wanted = int(floors[APPLICATION_IDS]) + 1
        if row is None or row[0] is None or int(row[0]) < wanted:
            await cursor.execute(f"ALTER TABLE applications AUTO_INCREMENT = {wanted}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else value
