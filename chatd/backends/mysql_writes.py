"""The SQL behind MysqlStore's writes: batch inserts with exact count deltas, the count fold
and the recount. Each function runs inside a transaction the store opened (``MysqlDatabase.run``).

Batch writes take their locks in one global order (chats by application and number, then
messages by chat and number), so that overlapping batches wait for each other instead of
deadlocking; existing chats are looked up, not re-inserted, so that a worker never locks a
chat row that the reconciler may be updating.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import aiomysql
import pymysql

from chatd.backends.mysql_db import from_db, to_db, token_text
from chatd.domain import CountsReconciled, MessageJob, SearchDocument

_ROWS_PER_INSERT = 100
_BYTES_PER_ROUND_TRIP = 4 * 1024 * 1024  # well under the smallest default max_allowed_packet (16 MB)

Statement = tuple[Any, str, list[Any]]  # (key the affected rows count towards, sql, args)


def _marks(count: int, mark: str = "%s") -> str:
    return ", ".join([mark] * count)


def _grouped(keys: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for first, second in sorted(keys):
        groups[first].append(second)
    return groups


def _where_pairs(keys: Iterable[tuple[int, int]], outer: str, inner: str) -> tuple[str, list[int]]:
    """``(outer = %s AND inner IN (...)) OR ...``: index range scans for a set of two-part keys."""
    clauses, args = [], []
    for first, seconds in _grouped(keys).items():
        clauses.append(f"({outer} = %s AND {inner} IN ({_marks(len(seconds))}))")
        args += [first, *seconds]
    return " OR ".join(clauses), args


async def _counted_statements(cursor: aiomysql.Cursor, statements: Sequence[Statement]) -> dict[Any, int]:
    """Run many statements in few round trips (multi-statement queries); sum affected rows per key.

    One statement per chat (or application) is what makes its affected-rows count the exact
    number of rows this transaction inserted for it.
    """
    counts: dict[Any, int] = defaultdict(int)
    start = 0
    while start < len(statements):
        end, size = start, 0
        while end < len(statements):
            # At most 4 bytes per character, escaped or not: an upper bound of what is sent.
            size += len(statements[end][1]) + sum(
                len(arg) * 4 if isinstance(arg, str) else 24 for arg in statements[end][2]
            )
            if end > start and size > _BYTES_PER_ROUND_TRIP:
                break
            end += 1
        chunk = statements[start:end]
        await cursor.execute(";\n".join(sql for _, sql, _ in chunk), [arg for _, _, args in chunk for arg in args])
        for index, (key, _, _) in enumerate(chunk):
            if index:
                await cursor.nextset()
            counts[key] += max(cursor.rowcount, 0)
        start = end
    return counts


def _insert_statements(
    table: str, columns: str, key_column: str, rows: dict[Any, list[tuple[Any, ...]]]
) -> list[Statement]:
    statements = []
    for key, values in rows.items():
        for start in range(0, len(values), _ROWS_PER_INSERT):
            chunk = values[start : start + _ROWS_PER_INSERT]
            placeholders = _marks(len(chunk), f"({_marks(len(chunk[0]))})")
            sql = (
                f"INSERT INTO {table} ({columns}) VALUES {placeholders}"
                f" ON DUPLICATE KEY UPDATE {key_column} = {key_column}"
            )
            statements.append((key, sql, [arg for row in chunk for arg in row]))
    return statements


async def _insert_deltas(cursor: aiomysql.Cursor, deltas: Sequence[tuple[int, int | None, int]]) -> None:
    if deltas:
        await cursor.execute(
            "INSERT INTO count_deltas (application_id, chat_id, delta) VALUES " + _marks(len(deltas), "(%s, %s, %s)"),
            [arg for row in deltas for arg in row],
        )


async def _chat_ids(cursor: aiomysql.Cursor, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
    where, args = _where_pairs(keys, "application_id", "number")
    await cursor.execute(f"SELECT application_id, number, id FROM chats WHERE {where}", args)
    return {(int(app_id), int(number)): int(chat_id) for app_id, number, chat_id in await cursor.fetchall()}


async def insert_chats(
    cursor: aiomysql.Cursor, chats: Sequence[tuple[int, int, datetime]], want_ids: bool = False
) -> dict[tuple[int, int], int]:
    """Insert the chats not stored yet, with one count delta per application for those inserted here.

    Chats of unknown applications are skipped. Returns the ids of the chats that exist,
    complete only with ``want_ids``.
    """
    wanted: dict[tuple[int, int], datetime] = {}
    for app_id, number, created_at in chats:
        wanted.setdefault((app_id, number), created_at)
    app_ids = sorted({app_id for app_id, _ in wanted})
    await cursor.execute(f"SELECT id FROM applications WHERE id IN ({_marks(len(app_ids))})", app_ids)
    known = {int(row[0]) for row in await cursor.fetchall()}
    wanted = {key: created_at for key, created_at in wanted.items() if key[0] in known}
    if not wanted:
        return {}
    ids = await _chat_ids(cursor, wanted)
    missing = sorted(key for key in wanted if key not in ids)
    if missing:
        rows: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
        for app_id, number in missing:
            rows[app_id].append((app_id, number, wanted[(app_id, number)]))
        added = await _counted_statements(
            cursor, _insert_statements("chats", "application_id, number, created_at", "number", rows)
        )
        await _insert_deltas(cursor, [(app_id, None, count) for app_id, count in added.items() if count])
        if want_ids:
            ids.update(await _chat_ids(cursor, missing))
    return ids


async def insert_messages(cursor: aiomysql.Cursor, jobs: Sequence[MessageJob]) -> list[SearchDocument]:
    # A message may overtake its chat's job in the queues: its chat is created here if needed.
    chat_ids = await insert_chats(
        cursor, [(job.application_id, job.chat_number, to_db(job.created_at)) for job in jobs], want_ids=True
    )
    firsts: dict[tuple[int, int], MessageJob] = {}
    for job in jobs:
        chat_id = chat_ids.get((job.application_id, job.chat_number))
        if chat_id is not None:
            firsts.setdefault((chat_id, job.message_number), job)
    if not firsts:
        return []
    rows: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for (chat_id, number), job in sorted(firsts.items(), key=lambda item: item[0]):
        stamp = to_db(job.created_at)
        rows[chat_id].append((chat_id, number, job.content, stamp, stamp))
    added = await _counted_statements(
        cursor, _insert_statements("messages", "chat_id, number, content, created_at, updated_at", "number", rows)
    )
    application_of = {chat_id: app_id for (app_id, _), chat_id in chat_ids.items()}
    await _insert_deltas(
        cursor, [(application_of[chat_id], chat_id, count) for chat_id, count in added.items() if count]
    )
    # A chat whose rows were all inserted here holds exactly what the jobs say; only the others
    # (re-deliveries, races with another worker) are read back.
    stored = {
        (chat_id, row[1]): (row[2], from_db(row[3]), 1)
        for chat_id, chat_rows in rows.items()
        if added[chat_id] == len(chat_rows)
        for row in chat_rows
    }
    stored.update(await _stored_versions(cursor, [key for key in firsts if key not in stored]))
    documents = []
    for job in jobs:
        chat_id = chat_ids.get((job.application_id, job.chat_number))
        if chat_id is not None:
            content, created_at, revision = stored[(chat_id, job.message_number)]
            documents.append(
                SearchDocument(job.application_id, job.chat_number, job.message_number, content, created_at, revision)
            )
    return documents


async def _stored_versions(
    cursor: aiomysql.Cursor, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], tuple[str, datetime, int]]:
    if not keys:
        return {}
    where, args = _where_pairs(keys, "chat_id", "number")
    await cursor.execute(f"SELECT chat_id, number, content, created_at, revision FROM messages WHERE {where}", args)
    return {(int(r[0]), int(r[1])): (r[2], from_db(r[3]), int(r[4])) for r in await cursor.fetchall()}


async def _add_counts(cursor: aiomysql.Cursor, table: str, column: str, deltas: dict[int, int]) -> None:
    statements: list[Statement] = []
    ids = sorted(deltas)  # one lock order for every reconciler
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        cases = " ".join(["WHEN %s THEN %s"] * len(chunk))
        statements.append(
            (
                None,
                f"UPDATE {table} SET {column} = {column} + CASE id {cases} END WHERE id IN ({_marks(len(chunk))})",
                [arg for row_id in chunk for arg in (row_id, deltas[row_id])] + chunk,
            )
        )
    if statements:
        await _counted_statements(cursor, statements)


async def fold_deltas(cursor: aiomysql.Cursor, limit: int) -> CountsReconciled:
    # SKIP LOCKED: a second reconciler takes the next deltas instead of waiting for (or, once
    # they are deleted, missing) those the first one holds; no delta is read by two of them.
    await cursor.execute(
        "SELECT id, application_id, chat_id, delta FROM count_deltas ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    )
    rows = await cursor.fetchall()
    if not rows:
        return CountsReconciled(0, [])
    per_app: dict[int, int] = defaultdict(int)
    per_chat: dict[int, int] = defaultdict(int)
    for _, app_id, chat_id, delta in rows:
        if chat_id is None:
            per_app[int(app_id)] += int(delta)
        else:
            per_chat[int(chat_id)] += int(delta)
    await _add_counts(cursor, "applications", "chats_count", per_app)
    await _add_counts(cursor, "chats", "messages_count", per_chat)
    ids = [int(row[0]) for row in rows]
    await cursor.execute(f"DELETE FROM count_deltas WHERE id IN ({_marks(len(ids))})", ids)
    tokens: list[str] = []
    if per_app:
        # The previous token's cached lookup carries the count too.
        await cursor.execute(
            f"SELECT token, previous_token FROM applications WHERE id IN ({_marks(len(per_app))})", list(per_app)
        )
        tokens = [token_text(token) for row in await cursor.fetchall() for token in row if token is not None]
    return CountsReconciled(len(rows), tokens)


_RECOUNT = (
    "DELETE FROM count_deltas",
    "UPDATE chats SET messages_count = (SELECT COUNT(*) FROM messages WHERE messages.chat_id = chats.id)",
    "UPDATE applications SET chats_count = (SELECT COUNT(*) FROM chats WHERE chats.application_id = applications.id)",
)


async def recount(cursor: aiomysql.Cursor) -> None:
    # Table locks keep workers from committing rows and deltas between the DELETE and the
    # counts (they would be counted twice); a repair may stop writes for its duration.
    await cursor.execute("LOCK TABLES applications WRITE, chats WRITE, messages READ, count_deltas WRITE")
    try:
        for statement in _RECOUNT:
            await cursor.execute(statement)
    except pymysql.MySQLError:
        # UNLOCK TABLES commits, so roll back first; a dead connection has released both already.
        with contextlib.suppress(pymysql.MySQLError, OSError):
            await cursor.connection.rollback()
            await cursor.execute("UNLOCK TABLES")
        raise
    await cursor.connection.commit()
    await cursor.execute("UNLOCK TABLES")
