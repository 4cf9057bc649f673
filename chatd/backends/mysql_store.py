"""The store on MySQL 8 / MariaDB 10.11 (InnoDB) through an aiomysql pool: production's source of truth.

Every operation is one transaction on one pooled connection (``MysqlDatabase``, in ``mysql_db.py``,
which also retries what is safe to retry), at READ COMMITTED: each
statement sees what other transactions committed before it, which the batch writes rely
on (a row another worker stored a moment ago must be visible to the SELECT that follows
our insert of the same key). Inserts are ``INSERT ... ON DUPLICATE KEY UPDATE k = k``
rather than ``INSERT IGNORE``: the same idempotence and the same affected-rows count
(1 per row inserted, 0 per row already there), without IGNORE turning every other error
(a too-long value, say) into a warning and a silently truncated row. The SQL of the batch
writes, the count fold and the recount is in ``mysql_writes.py``; reads and migrations are here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiomysql
import pymysql

from chatd.backends import mysql_edits as edits
from chatd.backends import mysql_numbers as numbers
from chatd.backends import mysql_sequences as sequences
from chatd.backends import mysql_writes as writes
from chatd.backends.lifecycle import Lifecycle
from chatd.backends.mysql_db import MysqlDatabase, MysqlTarget, from_db, to_db, token_text
from chatd.domain import (
    Application,
    Chat,
    ChatJob,
    CountsReconciled,
    EditedMessage,
    Message,
    MessageJob,
    NumberScope,
    OutboxEdits,
    Page,
    Rotated,
    SearchDocument,
)
from chatd.errors import BackendUnavailable
from chatd.migrations import migration_files, split_statements
from chatd.numbering import NumberRequest, SequenceState, Taken

logger = logging.getLogger(__name__)

# The store's identity (Store.identity): one row, a random id written the first time it is asked for.
IDENTITY_TABLE = "chatd_store_identity"

# How often a group is run again after another group recorded one of its idempotency keys first.
_KEY_RACE_ATTEMPTS = 3

_APP_COLUMNS = "id, token, name, chats_count, created_at"


def _application(row: Sequence[Any]) -> Application:
    return Application(int(row[0]), token_text(row[1]), row[2], int(row[3]), from_db(row[4]))


class MysqlStore(Lifecycle):
    """Applications, chats and messages in MySQL 8 or MariaDB 10.11 (InnoDB, utf8mb4)."""

    name = "mysql"

    def __init__(self, url: str):
        self.db = MysqlDatabase(MysqlTarget.parse(url))

    @property
    def target(self) -> MysqlTarget:
        return self.db.target

    # Lifecycle

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        async def select_one(cursor: aiomysql.Cursor) -> None:
            await cursor.execute("SELECT 1")

        await self.db.run(select_one, commit=False, seconds=2.0)

    async def replication_lag(self) -> float | None:
        """Seconds this server, a replica, lags behind its primary; None when it does not replicate."""

        async def status(cursor: aiomysql.Cursor) -> float | None:
            await cursor.execute("SHOW SLAVE STATUS")
            row = await cursor.fetchone()
            if row is None:
                return None
            named = dict(zip((column[0] for column in cursor.description), row, strict=True))
            if named.get("Slave_IO_Running") != "Yes" or named.get("Slave_SQL_Running") != "Yes":
                return None
            lag = named.get("Seconds_Behind_Master")
            return None if lag is None else float(lag)

        return await self.db.run(status, commit=False, seconds=2.0)

    async def destroy(self) -> None:
        """Drop this store's database (tests and throw-away environments)."""
        quoted = self.target.database.replace("`", "``")

        async def drop(cursor: aiomysql.Cursor) -> None:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{quoted}`")

        await self.db.run(drop, commit=True)

    async def migrate(self) -> list[str]:
        # DDL commits implicitly, so the named lock (not a transaction) keeps two processes
        # migrating at once from applying the same file twice; the server frees it if we die.
        lock_name = f"chatd_migrate:{self.target.database}"[:64]

        async def apply(cursor: aiomysql.Cursor) -> list[str]:
            await cursor.execute("SELECT GET_LOCK(%s, 120)", (lock_name,))
            if (await cursor.fetchone())[0] != 1:
                raise BackendUnavailable(
                    "mysql: timed out waiting for another process's migration", backend="mysql", cause="locked"
                )
            try:
                return await _apply_migrations(cursor)
            finally:
                await cursor.execute("SELECT RELEASE_LOCK(%s)", (lock_name,))

        return await self.db.run(apply, commit=True, seconds=600.0)

    # Applications

    async def create_application(self, token: str, name: str, created_at: datetime) -> Application:
        stamp = to_db(created_at)

        async def insert(cursor: aiomysql.Cursor) -> Application:
            await cursor.execute(
                "INSERT INTO applications (token, name, created_at, updated_at) VALUES (%s, %s, %s, %s)",
                (token, name, stamp, stamp),
            )
            return Application(int(cursor.lastrowid), token, name, 0, from_db(stamp))

        return await self.db.run(insert, commit=True)

    async def get_application(self, token: str) -> Application | None:
        row = await self.db.fetchone(
            f"SELECT {_APP_COLUMNS}, NULL FROM applications WHERE token = %s"
            " UNION ALL SELECT id, previous_token, name, chats_count, created_at, previous_token_expires_at"
            " FROM applications WHERE previous_token = %s",
            (token, token),
        )
        if row is None:
            return None
        return replace(_application(row), token_expires_at=None if row[5] is None else from_db(row[5]))

    async def list_applications(self, page: int, per_page: int) -> Page[Application]:
        async def query(cursor: aiomysql.Cursor) -> Page[Application]:
            await cursor.execute("SELECT COUNT(*) FROM applications")
            total = (await cursor.fetchone())[0]
            await cursor.execute(
                f"SELECT {_APP_COLUMNS} FROM applications ORDER BY id LIMIT %s OFFSET %s",
                (per_page, (page - 1) * per_page),
            )
            return Page([_application(row) for row in await cursor.fetchall()], page, per_page, int(total))

        return await self.db.run(query, commit=False)

    async def rename_application(self, application_id: int, name: str) -> Application | None:
        async def update(cursor: aiomysql.Cursor) -> Application | None:
            await cursor.execute(
                "UPDATE applications SET name = %s, updated_at = %s WHERE id = %s",
                (name, to_db(datetime.now(UTC)), application_id),
            )
            await cursor.execute(f"SELECT {_APP_COLUMNS} FROM applications WHERE id = %s", (application_id,))
            row = await cursor.fetchone()
            return None if row is None else _application(row)

        return await self.db.run(update, commit=True)

    async def rotate_token(self, token: str, new_token: str, previous_expires_at: datetime | None) -> Rotated | None:
        async def rotate(cursor: aiomysql.Cursor) -> Rotated | None:
            await cursor.execute("SELECT id, previous_token FROM applications WHERE token = %s FOR UPDATE", (token,))
            row = await cursor.fetchone()
            if row is None:
                return None
            await cursor.execute(
                "UPDATE applications SET token = %s, previous_token = %s, previous_token_expires_at = %s WHERE id = %s",
                (
                    new_token,
                    None if previous_expires_at is None else token,
                    None if previous_expires_at is None else to_db(previous_expires_at),
                    row[0],
                ),
            )
            await cursor.execute(f"SELECT {_APP_COLUMNS} FROM applications WHERE id = %s", (row[0],))
            revoked = None if row[1] is None else token_text(row[1])
            return Rotated(_application(await cursor.fetchone()), token, revoked)

        return await self.db.run(rotate, commit=True)

    async def revoke_previous_token(self, token: str) -> tuple[int, str | None] | None:
        async def revoke(cursor: aiomysql.Cursor) -> tuple[int, str | None] | None:
            await cursor.execute("SELECT id, previous_token FROM applications WHERE token = %s FOR UPDATE", (token,))
            row = await cursor.fetchone()
            if row is None:
                return None
            await cursor.execute(
                "UPDATE applications SET previous_token = NULL, previous_token_expires_at = NULL WHERE id = %s",
                (row[0],),
            )
            return int(row[0]), None if row[1] is None else token_text(row[1])

        return await self.db.run(revoke, commit=True)

    # Chats

    async def save_chats(self, jobs: Sequence[ChatJob]) -> None:
        chats = [(job.application_id, job.chat_number, to_db(job.created_at)) for job in jobs]

        async def save(cursor: aiomysql.Cursor) -> None:
            await writes.insert_chats(cursor, chats)

        if chats:
            await self.db.run(save, commit=True)

    async def get_chat(self, application_id: int, number: int) -> Chat | None:
        row = await self.db.fetchone(
            "SELECT number, messages_count, created_at FROM chats WHERE application_id = %s AND number = %s",
            (application_id, number),
        )
        return None if row is None else Chat(int(row[0]), int(row[1]), from_db(row[2]))

    async def list_chats(self, application_id: int, page: int, per_page: int) -> Page[Chat]:
        async def query(cursor: aiomysql.Cursor) -> Page[Chat]:
            await cursor.execute("SELECT COUNT(*) FROM chats WHERE application_id = %s", (application_id,))
            total = (await cursor.fetchone())[0]
            await cursor.execute(
                "SELECT number, messages_count, created_at FROM chats WHERE application_id = %s"
                " ORDER BY number LIMIT %s OFFSET %s",
                (application_id, per_page, (page - 1) * per_page),
            )
            items = [Chat(int(r[0]), int(r[1]), from_db(r[2])) for r in await cursor.fetchall()]
            return Page(items, page, per_page, int(total))

        return await self.db.run(query, commit=False)

    async def list_chats_after(self, application_id: int, after: int, limit: int) -> list[Chat]:
        async def query(cursor: aiomysql.Cursor) -> list[Chat]:
            # FORCE INDEX: see list_messages_after.
            await cursor.execute(
                "SELECT number, messages_count, created_at FROM chats FORCE INDEX (chats_application_number)"
                " WHERE application_id = %s AND number > %s ORDER BY number LIMIT %s",
                (application_id, after, limit),
            )
            return [Chat(int(r[0]), int(r[1]), from_db(r[2])) for r in await cursor.fetchall()]

        return await self.db.run(query, commit=False)

    # Messages

    async def save_messages(self, jobs: Sequence[MessageJob]) -> list[SearchDocument]:
        async def save(cursor: aiomysql.Cursor) -> list[SearchDocument]:
            return await writes.insert_messages(cursor, jobs)

        return await self.db.run(save, commit=True) if jobs else []

    async def get_message(self, application_id: int, chat_number: int, number: int) -> Message | None:
        row = await self.db.fetchone(
            "SELECT m.number, m.content, m.created_at, m.updated_at FROM chats c"
            " JOIN messages m ON m.chat_id = c.id WHERE c.application_id = %s AND c.number = %s AND m.number = %s",
            (application_id, chat_number, number),
        )
        return None if row is None else Message(int(row[0]), row[1], from_db(row[2]), from_db(row[3]))

    async def list_messages(self, application_id: int, chat_number: int, page: int, per_page: int) -> Page[Message]:
        async def query(cursor: aiomysql.Cursor) -> Page[Message]:
            chat_id = await _chat_id(cursor, application_id, chat_number)
            if chat_id is None:
                return Page([], page, per_page, 0)
            await cursor.execute("SELECT COUNT(*) FROM messages WHERE chat_id = %s", (chat_id,))
            total = (await cursor.fetchone())[0]
            await cursor.execute(
                "SELECT number, content, created_at, updated_at FROM messages WHERE chat_id = %s"
                " ORDER BY number LIMIT %s OFFSET %s",
                (chat_id, per_page, (page - 1) * per_page),
            )
            items = [Message(int(r[0]), r[1], from_db(r[2]), from_db(r[3])) for r in await cursor.fetchall()]
            return Page(items, page, per_page, int(total))

        return await self.db.run(query, commit=False)

    async def list_messages_after(self, application_id: int, chat_number: int, after: int, limit: int) -> list[Message]:
        async def query(cursor: aiomysql.Cursor) -> list[Message]:
            chat_id = await _chat_id(cursor, application_id, chat_number)
            if chat_id is None:
                return []
            # FORCE INDEX: MariaDB reads the (chat, number) index as a ref on the chat alone and
            # filters number > after row by row, walking every earlier message of the chat
            # (18 ms in the middle of a 200,000-message chat); forced, it is a range seek (0.5 ms).
            await cursor.execute(
                "SELECT number, content, created_at, updated_at, revision FROM messages"
                " FORCE INDEX (messages_chat_number) WHERE chat_id = %s AND number > %s ORDER BY number LIMIT %s",
                (chat_id, after, limit),
            )
            rows = await cursor.fetchall()
            return [Message(int(r[0]), r[1], from_db(r[2]), from_db(r[3]), int(r[4])) for r in rows]

        return await self.db.run(query, commit=False)

    async def update_message(
        self, application_id: int, chat_number: int, number: int, content: str, updated_at: datetime
    ) -> SearchDocument | None:
        stamp = to_db(updated_at)

        async def update(cursor: aiomysql.Cursor) -> SearchDocument | None:
            chat_id = await _chat_id(cursor, application_id, chat_number)
            if chat_id is None:
                return None
            # Lock the row first so that the revision we return is the one we wrote.
            await cursor.execute(
                "SELECT id, created_at, revision FROM messages WHERE chat_id = %s AND number = %s FOR UPDATE",
                (chat_id, number),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            await cursor.execute(
                "UPDATE messages SET content = %s, revision = revision + 1, updated_at = %s WHERE id = %s",
                (content, stamp, row[0]),
            )
            await edits.record_edit(cursor, int(row[0]), chat_id, number, int(row[2]) + 1, stamp)
            return SearchDocument(application_id, chat_number, number, content, from_db(row[1]), int(row[2]) + 1)

        return await self.db.run(update, commit=True)

    async def edits_to_relay(self, limit: int) -> OutboxEdits:
        return await self.db.run(lambda cursor: edits.edits_to_relay(cursor, limit), commit=False)

    async def forget_relayed_edits(self, ids: Sequence[int]) -> None:
        if ids:
            await self.db.run(lambda cursor: edits.forget_relayed(cursor, ids), commit=True)

    async def recent_edits(
        self, application_id: int, chat_number: int, up_to: int, since: datetime, limit: int
    ) -> list[EditedMessage]:
        return await self.db.run(
            lambda cursor: edits.recent_edits(cursor, application_id, chat_number, up_to, since, limit), commit=False
        )

    # Numbers and counts

    async def identity(self) -> str:
        async def read_or_create(cursor: aiomysql.Cursor) -> str:
            # Looked up first: CREATE TABLE IF NOT EXISTS on an existing table raises a MySQL
            # warning, which aiomysql turns into a Python warning on every start.
            await cursor.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = %s",
                (IDENTITY_TABLE,),
            )
            if not (await cursor.fetchone())[0]:
                await cursor.execute(
                    f"CREATE TABLE IF NOT EXISTS {IDENTITY_TABLE} (singleton TINYINT PRIMARY KEY, id CHAR(32) NOT NULL)"
                )
            await cursor.execute(
                f"INSERT INTO {IDENTITY_TABLE} VALUES (1, %s) ON DUPLICATE KEY UPDATE singleton = singleton",
                (uuid.uuid4().hex,),
            )
            await cursor.execute(f"SELECT id FROM {IDENTITY_TABLE}")
            return str((await cursor.fetchone())[0])

        return await self.db.run(read_or_create, commit=True)

    async def take_numbers(self, requests: Sequence[NumberRequest], now: float, key_ttl_seconds: float) -> list[Taken]:
        # Two groups recording the same new key at once: the second INSERT waits for the first
        # transaction and then fails on the duplicate; run again, it finds the first's record.
        for attempt in range(_KEY_RACE_ATTEMPTS):
            try:
                return await self.db.run(
                    lambda cursor: numbers.take_numbers(cursor, requests, now, key_ttl_seconds),
                    commit=True,
                )
            except pymysql.err.IntegrityError as exc:
                if attempt + 1 == _KEY_RACE_ATTEMPTS or not numbers.is_duplicate_key(exc):
                    raise
        raise AssertionError("unreachable")

    async def last_number(self, scope: NumberScope) -> int:
        row = await self.db.fetchone("SELECT last_number FROM number_counters WHERE scope = %s", (scope.key,))
        return int(row[0]) if row else 0

    async def forget_idempotency_keys(self, now: float, limit: int = 10_000) -> int:
        async def forget(cursor: aiomysql.Cursor) -> int:
            await cursor.execute(
                "DELETE FROM idempotency_keys WHERE expires_at <= %s ORDER BY expires_at LIMIT %s",
                (numbers.milliseconds(now), limit),
            )
            return int(cursor.rowcount)

        return await self.db.run(forget, commit=True)

    async def reconcile_counts(self, limit: int = 10_000) -> CountsReconciled:
        async def fold(cursor: aiomysql.Cursor) -> CountsReconciled:
            return await writes.fold_deltas(cursor, limit)

        return await self.db.run(fold, commit=True)

    async def documents_after(self, cursor: int, limit: int) -> tuple[int, list[SearchDocument]]:
        async def query(db: aiomysql.Cursor) -> list[Sequence[Any]]:
            # STRAIGHT_JOIN: messages first, in id order, each joined to its chat. Left to choose,
            # MariaDB read every chat, then every message, into a temporary table sorted for
            # each page: 1.7 s a page at 1M messages (58 ms this way), quadratic over a rebuild.
            await db.execute(
                "SELECT m.id, c.application_id, c.number, m.number, m.content, m.created_at, m.revision"
                " FROM messages m STRAIGHT_JOIN chats c ON c.id = m.chat_id WHERE m.id > %s ORDER BY m.id LIMIT %s",
                (cursor, limit),
            )
            return list(await db.fetchall())

        rows = await self.db.run(query, commit=False)
        documents = [SearchDocument(int(r[1]), int(r[2]), int(r[3]), r[4], from_db(r[5]), int(r[6])) for r in rows]
        return (int(rows[-1][0]) if rows else cursor), documents

    async def count_messages(self) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) FROM messages", ())
        return int(row[0]) if row is not None else 0

    async def recount_all(self) -> None:
        await self.db.run(writes.recount, commit=True, seconds=600.0)

    async def sequences(self) -> dict[str, SequenceState]:
        return await self.db.run(sequences.sequences, commit=False, seconds=600.0)

    async def sequences_taken_since(self, since: datetime) -> dict[str, int]:
        return await self.db.run(lambda cursor: sequences.taken_since(cursor, since), commit=False, seconds=600.0)

    async def newest_row_at(self) -> datetime | None:
        return await self.db.run(sequences.newest_row_at, commit=False, seconds=600.0)

    async def raise_sequences(self, floors: Mapping[str, int]) -> None:
        await self.db.run(lambda cursor: sequences.raise_sequences(cursor, floors), commit=True, seconds=600.0)

    async def burn_numbers(self, ranges: Mapping[str, tuple[int, int]]) -> None:
        rows = sorted((scope, low, high) for scope, (low, high) in ranges.items() if high > low)

        async def insert(cursor: aiomysql.Cursor) -> None:
            for start in range(0, len(rows), 1_000):
                chunk = rows[start : start + 1_000]
                await cursor.execute(
                    f"INSERT INTO number_fences (scope, burnt_after, burnt_upto)"
                    f" VALUES {', '.join(['(%s, %s, %s)'] * len(chunk))}"
                    f" ON DUPLICATE KEY UPDATE burnt_upto = GREATEST(burnt_upto, CASE"
                    f" {' '.join(['WHEN scope = %s AND burnt_after = %s THEN %s'] * len(chunk))} END)",
                    [value for row in chunk for value in row] * 2,
                )

        await self.db.run(insert, commit=True, seconds=600.0)

    async def is_burnt(self, scope: NumberScope, number: int) -> bool:
        row = await self.db.fetchone(
            "SELECT 1 FROM number_fences WHERE scope = %s AND burnt_after < %s AND %s <= burnt_upto LIMIT 1",
            (scope.key, number, number),
        )
        return row is not None


async def _chat_id(cursor: aiomysql.Cursor, application_id: int, chat_number: int) -> int | None:
    await cursor.execute(
        "SELECT id FROM chats WHERE application_id = %s AND number = %s", (application_id, chat_number)
    )
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def _apply_migrations(cursor: aiomysql.Cursor) -> list[str]:
    await cursor.execute(
        "SELECT COUNT(*) FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name = 'schema_migrations'"
    )
    if (await cursor.fetchone())[0] == 0:
        await cursor.execute(
            "CREATE TABLE schema_migrations (name VARCHAR(191) NOT NULL PRIMARY KEY,"
            " applied_at DATETIME(3) NOT NULL)"
            " ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci"
        )
    await cursor.execute("SELECT name FROM schema_migrations")
    done = {row[0] for row in await cursor.fetchall()}
    applied = []
    for name, sql in migration_files("mysql"):
        if name in done:
            continue
        for statement in split_statements(sql):
            await cursor.execute(statement)
        await cursor.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (%s, UTC_TIMESTAMP(3))", (name,))
        await cursor.connection.commit()
        logger.info("applied mysql migration %s", name)
        applied.append(name)
    return applied
