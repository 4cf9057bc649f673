"""The store on SQLite: the embedded default's source of truth."""

from __future__ import annotations

import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from chatd.backends import sqlite_edits as edits
from chatd.backends import sqlite_sequences as sequences
from chatd.backends.sqlite_db import SqliteBacked, SqliteDatabase, path_from_url
from chatd.backends.sqlite_lists import chunks
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
from chatd.jobs import format_time, parse_time
from chatd.migrations import migration_files, split_statements
from chatd.numbering import NumberingPlan, NumberRequest, Record, SequenceState, Taken

# The store's identity (Store.identity): one row, a random id written the first time it is asked for.
IDENTITY_TABLE = "chatd_store_identity"

_APP_COLUMNS = "id, token, name, chats_count, created_at"


def _application(row: sqlite3.Row | tuple) -> Application:  # type: ignore[type-arg]
    return Application(row[0], row[1], row[2], row[3], parse_time(row[4]))


class SqliteStore(SqliteBacked):
    """Applications, chats and messages in one SQLite file (WAL)."""

    name = "sqlite"

    def __init__(self, database: SqliteDatabase | str):
        """``database``: the file's database, shared with other backends; or a ``sqlite://`` URL of its own."""
        super().__init__(database if isinstance(database, SqliteDatabase) else path_from_url(database))

    async def migrate(self) -> list[str]:
        def apply(conn: sqlite3.Connection) -> list[str]:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            applied = []
            for name, sql in migration_files("sqlite"):
                if name in done:
                    continue
                for statement in split_statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (name,))
                applied.append(name)
            return applied

        return await self.db.transaction(apply)

    # Applications

    async def create_application(self, token: str, name: str, created_at: datetime) -> Application:
        stamp = format_time(created_at)

        def insert(conn: sqlite3.Connection) -> Application:
            cursor = conn.execute(
                "INSERT INTO applications (token, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (token, name, stamp, stamp),
            )
            return Application(int(cursor.lastrowid or 0), token, name, 0, created_at)

        return await self.db.transaction(insert)

    async def get_application(self, token: str) -> Application | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                f"SELECT {_APP_COLUMNS}, NULL FROM applications WHERE token = ?"
                " UNION ALL SELECT id, previous_token, name, chats_count, created_at, previous_token_expires_at"
                " FROM applications WHERE previous_token = ?",
                (token, token),
            ).fetchone()
        )
        if row is None:
            return None
        return replace(_application(row), token_expires_at=None if row[5] is None else parse_time(row[5]))

    async def list_applications(self, page: int, per_page: int) -> Page[Application]:
        def query(conn: sqlite3.Connection) -> Page[Application]:
            total = conn.execute("SELECT COUNT(*) FROM applications").fetchone()[0]
            rows = conn.execute(
                f"SELECT {_APP_COLUMNS} FROM applications ORDER BY id LIMIT ? OFFSET ?",
                (per_page, (page - 1) * per_page),
            ).fetchall()
            return Page([_application(row) for row in rows], page, per_page, total)

        return await self.db.read(query)

    async def rename_application(self, application_id: int, name: str) -> Application | None:
        def update(conn: sqlite3.Connection) -> Application | None:
            conn.execute(
                "UPDATE applications SET name = ?, updated_at = datetime('now') WHERE id = ?", (name, application_id)
            )
            row = conn.execute(f"SELECT {_APP_COLUMNS} FROM applications WHERE id = ?", (application_id,)).fetchone()
            return None if row is None else _application(row)

        return await self.db.transaction(update)

    async def rotate_token(self, token: str, new_token: str, previous_expires_at: datetime | None) -> Rotated | None:
        def rotate(conn: sqlite3.Connection) -> Rotated | None:
            row = conn.execute("SELECT id, previous_token FROM applications WHERE token = ?", (token,)).fetchone()
            if row is None:
                return None
            keep = None if previous_expires_at is None else token
            conn.execute(
                "UPDATE applications SET token = ?, previous_token = ?, previous_token_expires_at = ? WHERE id = ?",
                (new_token, keep, None if previous_expires_at is None else format_time(previous_expires_at), row[0]),
            )
            app = conn.execute(f"SELECT {_APP_COLUMNS} FROM applications WHERE id = ?", (row[0],)).fetchone()
            return Rotated(_application(app), token, row[1])

        return await self.db.transaction(rotate)

    async def revoke_previous_token(self, token: str) -> tuple[int, str | None] | None:
        def revoke(conn: sqlite3.Connection) -> tuple[int, str | None] | None:
            row = conn.execute("SELECT id, previous_token FROM applications WHERE token = ?", (token,)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE applications SET previous_token = NULL, previous_token_expires_at = NULL WHERE id = ?",
                (row[0],),
            )
            return int(row[0]), row[1]

        return await self.db.transaction(revoke)

    # Chats

    async def save_chats(self, jobs: Sequence[ChatJob]) -> None:
        await self.db.transaction(
            lambda conn: _insert_chats(conn, [(j.application_id, j.chat_number, j.created_at) for j in jobs])
        )

    async def get_chat(self, application_id: int, number: int) -> Chat | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT number, messages_count, created_at FROM chats WHERE application_id = ? AND number = ?",
                (application_id, number),
            ).fetchone()
        )
        return None if row is None else Chat(row[0], row[1], parse_time(row[2]))

    async def list_chats(self, application_id: int, page: int, per_page: int) -> Page[Chat]:
        def query(conn: sqlite3.Connection) -> Page[Chat]:
            total = conn.execute("SELECT COUNT(*) FROM chats WHERE application_id = ?", (application_id,)).fetchone()[0]
            rows = conn.execute(
                "SELECT number, messages_count, created_at FROM chats WHERE application_id = ?"
                " ORDER BY number LIMIT ? OFFSET ?",
                (application_id, per_page, (page - 1) * per_page),
            ).fetchall()
            return Page([Chat(r[0], r[1], parse_time(r[2])) for r in rows], page, per_page, total)

        return await self.db.read(query)

    async def list_chats_after(self, application_id: int, after: int, limit: int) -> list[Chat]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT number, messages_count, created_at FROM chats WHERE application_id = ? AND number > ?"
                " ORDER BY number LIMIT ?",
                (application_id, after, limit),
            ).fetchall()
        )
        return [Chat(r[0], r[1], parse_time(r[2])) for r in rows]

    # Messages

    async def save_messages(self, jobs: Sequence[MessageJob]) -> list[SearchDocument]:
        return await self.db.transaction(lambda conn: _insert_messages(conn, jobs))

    async def get_message(self, application_id: int, chat_number: int, number: int) -> Message | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT m.number, m.content, m.created_at, m.updated_at FROM messages m"
                " JOIN chats c ON c.id = m.chat_id WHERE c.application_id = ? AND c.number = ? AND m.number = ?",
                (application_id, chat_number, number),
            ).fetchone()
        )
        return None if row is None else Message(row[0], row[1], parse_time(row[2]), parse_time(row[3]))

    async def list_messages(self, application_id: int, chat_number: int, page: int, per_page: int) -> Page[Message]:
        def query(conn: sqlite3.Connection) -> Page[Message]:
            chat = conn.execute(
                "SELECT id FROM chats WHERE application_id = ? AND number = ?", (application_id, chat_number)
            ).fetchone()
            if chat is None:
                return Page([], page, per_page, 0)
            total = conn.execute("SELECT COUNT(*) FROM messages WHERE chat_id = ?", (chat[0],)).fetchone()[0]
            rows = conn.execute(
                "SELECT number, content, created_at, updated_at FROM messages WHERE chat_id = ?"
                " ORDER BY number LIMIT ? OFFSET ?",
                (chat[0], per_page, (page - 1) * per_page),
            ).fetchall()
            items = [Message(r[0], r[1], parse_time(r[2]), parse_time(r[3])) for r in rows]
            return Page(items, page, per_page, total)

        return await self.db.read(query)

    async def list_messages_after(self, application_id: int, chat_number: int, after: int, limit: int) -> list[Message]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT m.number, m.content, m.created_at, m.updated_at, m.revision"
                " FROM chats c JOIN messages m ON m.chat_id = c.id"
                " WHERE c.application_id = ? AND c.number = ? AND m.number > ? ORDER BY m.number LIMIT ?",
                (application_id, chat_number, after, limit),
            ).fetchall()
        )
        return [Message(r[0], r[1], parse_time(r[2]), parse_time(r[3]), r[4]) for r in rows]

    async def update_message(
        self, application_id: int, chat_number: int, number: int, content: str, updated_at: datetime
    ) -> SearchDocument | None:
        stamp = format_time(updated_at)

        def update(conn: sqlite3.Connection) -> SearchDocument | None:
            row = conn.execute(
                "SELECT m.id, m.created_at, m.revision, m.chat_id FROM messages m JOIN chats c ON c.id = m.chat_id"
                " WHERE c.application_id = ? AND c.number = ? AND m.number = ?",
                (application_id, chat_number, number),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE messages SET content = ?, revision = revision + 1, updated_at = ? WHERE id = ?",
                (content, stamp, row[0]),
            )
            edits.record_edit(conn, row[0], row[3], number, row[2] + 1, stamp)
            return SearchDocument(application_id, chat_number, number, content, parse_time(row[1]), row[2] + 1)

        return await self.db.transaction(update)

    async def edits_to_relay(self, limit: int) -> OutboxEdits:
        return await self.db.read(lambda conn: edits.edits_to_relay(conn, limit))

    async def forget_relayed_edits(self, ids: Sequence[int]) -> None:
        if ids:
            await self.db.transaction(lambda conn: edits.forget_relayed(conn, ids))

    async def recent_edits(
        self, application_id: int, chat_number: int, up_to: int, since: datetime, limit: int
    ) -> list[EditedMessage]:
        return await self.db.read(
            lambda conn: edits.recent_edits(conn, application_id, chat_number, up_to, since, limit)
        )

    # Numbers and counts

    async def identity(self) -> str:
        def read_or_create(conn: sqlite3.Connection) -> str:
            # Here rather than in a migration: the search index asks before the store migrates.
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {IDENTITY_TABLE} (singleton INTEGER PRIMARY KEY, id TEXT NOT NULL)"
            )
            conn.execute(f"INSERT OR IGNORE INTO {IDENTITY_TABLE} VALUES (1, ?)", (uuid.uuid4().hex,))
            return str(conn.execute(f"SELECT id FROM {IDENTITY_TABLE}").fetchone()[0])

        return await self.db.transaction(read_or_create)

    async def take_numbers(self, requests: Sequence[NumberRequest], now: float, key_ttl_seconds: float) -> list[Taken]:
        def take(conn: sqlite3.Connection) -> list[Taken]:
            keys = list({key for request in requests if (key := request.record_key) is not None})
            recorded: dict[str, Record] = {}
            for chunk in chunks(keys):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT idempotency_key, number, fingerprint FROM idempotency_keys"
                    f" WHERE idempotency_key IN ({marks}) AND expires_at > ?",
                    (*chunk, now),
                ).fetchall()
                recorded.update({row[0]: Record(int(row[1]), row[2]) for row in rows})
            plan = NumberingPlan(requests, recorded)
            last_numbers = {}
            for scope, count in plan.counts.items():
                # fetchall, not fetchone: a RETURNING statement must run to completion before COMMIT.
                rows = conn.execute(
                    "INSERT INTO number_counters (scope, last_number) VALUES (?, ?) ON CONFLICT (scope)"
                    " DO UPDATE SET last_number = last_number + excluded.last_number RETURNING last_number",
                    (scope, count),
                ).fetchall()
                last_numbers[scope] = int(rows[0][0])
            answers, records = plan.finish(last_numbers)
            overshoot = plan.overshoot(last_numbers)
            if overshoot:  # only a group that met a ceiling: its refused numbers are given back
                conn.executemany(
                    "UPDATE number_counters SET last_number = ? WHERE scope = ?",
                    [(last, scope) for scope, last in overshoot.items()],
                )
            if records:
                conn.executemany(
                    "INSERT INTO idempotency_keys (idempotency_key, number, fingerprint, expires_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (idempotency_key) DO UPDATE SET number = excluded.number,"
                    " fingerprint = excluded.fingerprint, expires_at = excluded.expires_at",
                    [(key, r.number, r.fingerprint, now + key_ttl_seconds) for key, r in records.items()],
                )
            return answers

        return await self.db.transaction(take)

    async def last_number(self, scope: NumberScope) -> int:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT last_number FROM number_counters WHERE scope = ?", (scope.key,)
            ).fetchone()
        )
        return int(row[0]) if row else 0

    async def forget_idempotency_keys(self, now: float, limit: int = 10_000) -> int:
        def forget(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM idempotency_keys WHERE idempotency_key IN"
                " (SELECT idempotency_key FROM idempotency_keys WHERE expires_at <= ? LIMIT ?)",
                (now, limit),
            ).rowcount

        return await self.db.transaction(forget)

    async def reconcile_counts(self, limit: int = 10_000) -> CountsReconciled:
        return await self.db.transaction(lambda conn: _fold_deltas(conn, limit))

    async def documents_after(self, cursor: int, limit: int) -> tuple[int, list[SearchDocument]]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT m.id, c.application_id, c.number, m.number, m.content, m.created_at, m.revision"
                " FROM messages m JOIN chats c ON c.id = m.chat_id WHERE m.id > ? ORDER BY m.id LIMIT ?",
                (cursor, limit),
            ).fetchall()
        )
        documents = [SearchDocument(r[1], r[2], r[3], r[4], parse_time(r[5]), r[6]) for r in rows]
        return (rows[-1][0] if rows else cursor), documents

    async def count_messages(self) -> int:
        row = await self.db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM messages").fetchone())
        return int(row[0])

    async def sequences(self) -> dict[str, SequenceState]:
        return await self.db.read(sequences.sequences)

    async def sequences_taken_since(self, since: datetime) -> dict[str, int]:
        return await self.db.read(lambda conn: sequences.taken_since(conn, since))

    async def newest_row_at(self) -> datetime | None:
        return await self.db.read(sequences.newest_row_at)

    async def raise_sequences(self, floors: Mapping[str, int]) -> None:
        await self.db.transaction(lambda conn: sequences.raise_sequences(conn, floors))

    async def burn_numbers(self, ranges: Mapping[str, tuple[int, int]]) -> None:
        rows = sorted((scope, low, high) for scope, (low, high) in ranges.items() if high > low)
        await self.db.transaction(
            lambda conn: conn.executemany(
                "INSERT INTO number_fences (scope, burnt_after, burnt_upto) VALUES (?, ?, ?)"
                " ON CONFLICT (scope, burnt_after) DO UPDATE SET burnt_upto = MAX(burnt_upto, excluded.burnt_upto)",
                rows,
            )
        )

    async def is_burnt(self, scope: NumberScope, number: int) -> bool:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT 1 FROM number_fences WHERE scope = ? AND burnt_after < ? AND ? <= burnt_upto LIMIT 1",
                (scope.key, number, number),
            ).fetchone()
        )
        return row is not None

    async def recount_all(self) -> None:
        def recount(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM count_deltas")
            conn.execute(
                "UPDATE chats SET messages_count = (SELECT COUNT(*) FROM messages m WHERE m.chat_id = chats.id)"
            )
            conn.execute(
                "UPDATE applications SET chats_count = (SELECT COUNT(*) FROM chats c"
                " WHERE c.application_id = applications.id)"
            )

        await self.db.transaction(recount)


def _insert_chats(conn: sqlite3.Connection, chats: Sequence[tuple[int, int, datetime]]) -> None:
    """Insert chats not stored yet, and record one count delta per application for them."""
    known = _existing_applications(conn, {app_id for app_id, _, _ in chats})
    added: dict[int, int] = defaultdict(int)
    for app_id, number, created_at in chats:
        if app_id not in known:
            continue
        cursor = conn.execute(
            "INSERT OR IGNORE INTO chats (application_id, number, created_at) VALUES (?, ?, ?)",
            (app_id, number, format_time(created_at)),
        )
        added[app_id] += cursor.rowcount
    conn.executemany(
        "INSERT INTO count_deltas (application_id, chat_id, delta) VALUES (?, NULL, ?)",
        [(app_id, n) for app_id, n in added.items() if n],
    )


def _existing_applications(conn: sqlite3.Connection, ids: set[int]) -> set[int]:
    marks = ",".join("?" * len(ids))
    return {row[0] for row in conn.execute(f"SELECT id FROM applications WHERE id IN ({marks})", list(ids))}


def _insert_messages(conn: sqlite3.Connection, jobs: Sequence[MessageJob]) -> list[SearchDocument]:
    # A message may overtake its chat's job in the queues: its chat is created here if needed.
    _insert_chats(conn, [(j.application_id, j.chat_number, j.created_at) for j in jobs])
    chat_ids: dict[tuple[int, int], int] = {}
    for job in jobs:
        key = (job.application_id, job.chat_number)
        if key not in chat_ids:
            row = conn.execute("SELECT id FROM chats WHERE application_id = ? AND number = ?", key).fetchone()
            if row is not None:
                chat_ids[key] = row[0]
    added: dict[tuple[int, int], int] = defaultdict(int)
    documents = []
    for job in jobs:
        chat_id = chat_ids.get((job.application_id, job.chat_number))
        if chat_id is None:
            continue
        stamp = format_time(job.created_at)
        cursor = conn.execute(
            "INSERT OR IGNORE INTO messages (chat_id, number, content, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (chat_id, job.message_number, job.content, stamp, stamp),
        )
        added[(job.application_id, chat_id)] += cursor.rowcount
        row = conn.execute(
            "SELECT content, created_at, revision FROM messages WHERE chat_id = ? AND number = ?",
            (chat_id, job.message_number),
        ).fetchone()
        documents.append(
            SearchDocument(job.application_id, job.chat_number, job.message_number, row[0], parse_time(row[1]), row[2])
        )
    conn.executemany(
        "INSERT INTO count_deltas (application_id, chat_id, delta) VALUES (?, ?, ?)",
        [(app_id, chat_id, n) for (app_id, chat_id), n in added.items() if n],
    )
    return documents


def _fold_deltas(conn: sqlite3.Connection, limit: int) -> CountsReconciled:
    rows = conn.execute(
        "SELECT id, application_id, chat_id, delta FROM count_deltas ORDER BY id LIMIT ?", (limit,)
    ).fetchall()
    if not rows:
        return CountsReconciled(0, [])
    per_app: dict[int, int] = defaultdict(int)
    per_chat: dict[int, int] = defaultdict(int)
    touched: set[int] = set()
    for _, app_id, chat_id, delta in rows:
        if chat_id is None:
            touched.add(app_id)
            per_app[app_id] += delta
        else:
            per_chat[chat_id] += delta
    conn.executemany(
        "UPDATE applications SET chats_count = chats_count + ? WHERE id = ?",
        [(delta, app_id) for app_id, delta in per_app.items()],
    )
    conn.executemany(
        "UPDATE chats SET messages_count = messages_count + ? WHERE id = ?",
        [(delta, chat_id) for chat_id, delta in per_chat.items()],
    )
    conn.executemany("DELETE FROM count_deltas WHERE id = ?", [(row[0],) for row in rows])
    marks = ",".join("?" * len(touched))
    # The previous token's cached lookup carries the count too.
    tokens = [
        token
        for row in conn.execute(f"SELECT token, previous_token FROM applications WHERE id IN ({marks})", list(touched))
        for token in row
        if token is not None
    ]
    return CountsReconciled(len(rows), tokens)
