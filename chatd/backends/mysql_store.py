"""The store on MySQL 8 / MariaDB 10.11 (InnoDB) through an aiomysql pool: production's source of truth.

Every operation is one transaction on one pooled connection, at READ COMMITTED: each
statement sees what other transactions committed before it, which the batch writes rely
on (a row another worker stored a moment ago must be visible to the SELECT that follows
our insert of the same key). Inserts are ``INSERT ... ON DUPLICATE KEY UPDATE k = k``
rather than ``INSERT IGNORE``: the same idempotence and the same affected-rows count
(1 per row inserted, 0 per row already there), without IGNORE turning every other error
(a too-long value, say) into a warning and a silently truncated row.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import aiomysql
import pymysql

from chatd.backends import mysql_writes as writes
from chatd.backends.mysql_writes import from_db, to_db
from chatd.domain import (
    Application,
    Chat,
    ChatJob,
    CountsReconciled,
    Message,
    MessageJob,
    NumberScope,
    Page,
    SearchDocument,
)
from chatd.errors import BackendUnavailable

logger = logging.getLogger(__name__)

# The store's identity (Store.identity): one row, a random id written the first time it is asked for.
IDENTITY_TABLE = "chatd_store_identity"

T = TypeVar("T")
Work = Callable[[aiomysql.Cursor], Awaitable[T]]

# Client codes for "unreachable / connection lost", and server codes for a server going away
# (1053 shutdown in progress, 1927 MariaDB connection killed, 4031 MySQL idle disconnect) or
# turning clients away (1040 too many connections).
_LOST_CODES = frozenset({2002, 2003, 2006, 2013, 2055, 1040, 1053, 1927, 4031})
# InnoDB rolled the transaction back (1213 deadlock) or gave up waiting for a lock (1205).
_CONTENDED_CODES = frozenset({1205, 1213})
_CONTENDED_ATTEMPTS = 5

_APP_COLUMNS = "id, token, name, chats_count, created_at"


@dataclass(frozen=True)
class MysqlTarget:
    """Where and how to connect, from ``mysql://user:pass@host:port/db?pool_size=&timeout=``."""

    host: str
    port: int
    user: str
    password: str
    database: str
    pool_size: int = 10
    timeout: float = 30.0  # per transaction: a server that stops answering becomes a 503
    connect_timeout: float = 5.0

    @classmethod
    def parse(cls, url: str) -> MysqlTarget:
        parts = urlsplit(url)
        if parts.scheme != "mysql":
            raise ValueError(f"not a mysql URL: {url}")
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ValueError("a mysql URL names its database: mysql://user:pass@host:port/dbname")
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
            pool_size=int(query.get("pool_size", 10)),
            timeout=float(query.get("timeout", 30.0)),
            connect_timeout=float(query.get("connect_timeout", 5.0)),
        )


def is_connection_error(exc: BaseException) -> bool:
    """True if ``exc`` means the server cannot be reached or the connection is gone."""
    if isinstance(exc, pymysql.err.OperationalError):
        return bool(exc.args) and exc.args[0] in _LOST_CODES
    return isinstance(exc, (pymysql.err.InterfaceError, OSError))  # OSError: ConnectionError, TimeoutError


def _is_contended(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in _CONTENDED_CODES


class _Lost(Exception):
    """The connection died before COMMIT was sent: nothing was applied, a retry is safe."""


def _application(row: Sequence[Any]) -> Application:
    return Application(int(row[0]), writes.token_text(row[1]), row[2], int(row[3]), from_db(row[4]))


class MysqlStore:
    """Applications, chats and messages in MySQL 8 or MariaDB 10.11 (InnoDB, utf8mb4)."""

    name = "mysql"

    def __init__(self, url: str):
        self.target = MysqlTarget.parse(url)
        self._pool: aiomysql.Pool | None = None

    # Lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            return
        target = self.target
        try:
            self._pool = await aiomysql.create_pool(
                minsize=1,
                maxsize=target.pool_size,
                # Idle connections older than this are replaced (below any server wait_timeout);
                # connections the server closed are dropped by the pool on acquire.
                pool_recycle=3600,
                host=target.host,
                port=target.port,
                user=target.user,
                password=target.password,
                db=target.database,
                charset="utf8mb4",
                autocommit=False,
                connect_timeout=target.connect_timeout,
                # No CLIENT.FOUND_ROWS: affected rows must count rows inserted, not rows matched.
                client_flag=0,
                init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            )
        except Exception as exc:
            if is_connection_error(exc):
                raise BackendUnavailable(f"mysql unreachable: {exc}") from exc
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        try:
            await asyncio.wait_for(pool.wait_closed(), 5.0)
        except TimeoutError:
            pool.terminate()  # a connection still checked out: close it under its user's feet

    async def ping(self) -> None:
        async def select_one(cursor: aiomysql.Cursor) -> None:
            await cursor.execute("SELECT 1")

        await self._run(select_one, commit=False, seconds=2.0)

    async def destroy(self) -> None:
        """Drop this store's database (tests and throw-away environments)."""
        quoted = self.target.database.replace("`", "``")

        async def drop(cursor: aiomysql.Cursor) -> None:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{quoted}`")

        await self._run(drop, commit=True)

    async def migrate(self) -> list[str]:
        # DDL commits implicitly, so the named lock (not a transaction) keeps two processes
        # migrating at once from applying the same file twice; the server frees it if we die.
        lock_name = f"chatd_migrate:{self.target.database}"[:64]

        async def apply(cursor: aiomysql.Cursor) -> list[str]:
            await cursor.execute("SELECT GET_LOCK(%s, 120)", (lock_name,))
            if (await cursor.fetchone())[0] != 1:
                raise BackendUnavailable("timed out waiting for another process's migration")
            try:
                return await writes.apply_migrations(cursor)
            finally:
                await cursor.execute("SELECT RELEASE_LOCK(%s)", (lock_name,))

        return await self._run(apply, commit=True, seconds=600.0)

    # Applications

    async def create_application(self, token: str, name: str, created_at: datetime) -> Application:
        stamp = to_db(created_at)

        async def insert(cursor: aiomysql.Cursor) -> Application:
            await cursor.execute(
                "INSERT INTO applications (token, name, created_at, updated_at) VALUES (%s, %s, %s, %s)",
                (token, name, stamp, stamp),
            )
            return Application(int(cursor.lastrowid), token, name, 0, from_db(stamp))

        return await self._run(insert, commit=True)

    async def get_application(self, token: str) -> Application | None:
        row = await self._fetchone(f"SELECT {_APP_COLUMNS} FROM applications WHERE token = %s", (token,))
        return None if row is None else _application(row)

    async def list_applications(self, page: int, per_page: int) -> Page[Application]:
        async def query(cursor: aiomysql.Cursor) -> Page[Application]:
            await cursor.execute("SELECT COUNT(*) FROM applications")
            total = (await cursor.fetchone())[0]
            await cursor.execute(
                f"SELECT {_APP_COLUMNS} FROM applications ORDER BY id LIMIT %s OFFSET %s",
                (per_page, (page - 1) * per_page),
            )
            return Page([_application(row) for row in await cursor.fetchall()], page, per_page, int(total))

        return await self._run(query, commit=False)

    async def rename_application(self, token: str, name: str) -> Application | None:
        async def update(cursor: aiomysql.Cursor) -> Application | None:
            await cursor.execute(
                "UPDATE applications SET name = %s, updated_at = %s WHERE token = %s",
                (name, to_db(datetime.now(UTC)), token),
            )
            await cursor.execute(f"SELECT {_APP_COLUMNS} FROM applications WHERE token = %s", (token,))
            row = await cursor.fetchone()
            return None if row is None else _application(row)

        return await self._run(update, commit=True)

    # Chats

    async def save_chats(self, jobs: Sequence[ChatJob]) -> None:
        chats = [(job.application_id, job.chat_number, to_db(job.created_at)) for job in jobs]

        async def save(cursor: aiomysql.Cursor) -> None:
            await writes.insert_chats(cursor, chats)

        if chats:
            await self._run(save, commit=True)

    async def get_chat(self, application_id: int, number: int) -> Chat | None:
        row = await self._fetchone(
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

        return await self._run(query, commit=False)

    async def list_chats_after(self, application_id: int, after: int, limit: int) -> list[Chat]:
        async def query(cursor: aiomysql.Cursor) -> list[Chat]:
            await cursor.execute(
                "SELECT number, messages_count, created_at FROM chats WHERE application_id = %s AND number > %s"
                " ORDER BY number LIMIT %s",
                (application_id, after, limit),
            )
            return [Chat(int(r[0]), int(r[1]), from_db(r[2])) for r in await cursor.fetchall()]

        return await self._run(query, commit=False)

    # Messages

    async def save_messages(self, jobs: Sequence[MessageJob]) -> list[SearchDocument]:
        async def save(cursor: aiomysql.Cursor) -> list[SearchDocument]:
            return await writes.insert_messages(cursor, jobs)

        return await self._run(save, commit=True) if jobs else []

    async def get_message(self, application_id: int, chat_number: int, number: int) -> Message | None:
        row = await self._fetchone(
            "SELECT m.number, m.content, m.created_at, m.updated_at FROM chats c"
            " JOIN messages m ON m.chat_id = c.id WHERE c.application_id = %s AND c.number = %s AND m.number = %s",
            (application_id, chat_number, number),
        )
        return None if row is None else Message(int(row[0]), row[1], from_db(row[2]), from_db(row[3]))

    async def list_messages(self, application_id: int, chat_number: int, page: int, per_page: int) -> Page[Message]:
        async def query(cursor: aiomysql.Cursor) -> Page[Message]:
            chat_id = await writes.chat_id(cursor, application_id, chat_number)
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

        return await self._run(query, commit=False)

    async def list_messages_after(self, application_id: int, chat_number: int, after: int, limit: int) -> list[Message]:
        async def query(cursor: aiomysql.Cursor) -> list[Message]:
            chat_id = await writes.chat_id(cursor, application_id, chat_number)
            if chat_id is None:
                return []
            await cursor.execute(
                "SELECT number, content, created_at, updated_at FROM messages WHERE chat_id = %s AND number > %s"
                " ORDER BY number LIMIT %s",
                (chat_id, after, limit),
            )
            return [Message(int(r[0]), r[1], from_db(r[2]), from_db(r[3])) for r in await cursor.fetchall()]

        return await self._run(query, commit=False)

    async def update_message(
        self, application_id: int, chat_number: int, number: int, content: str, updated_at: datetime
    ) -> SearchDocument | None:
        async def update(cursor: aiomysql.Cursor) -> SearchDocument | None:
            chat_id = await writes.chat_id(cursor, application_id, chat_number)
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
                (content, to_db(updated_at), row[0]),
            )
            return SearchDocument(application_id, chat_number, number, content, from_db(row[1]), int(row[2]) + 1)

        return await self._run(update, commit=True)

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

        return await self._run(read_or_create, commit=True)

    async def number_floor(self, scope: NumberScope) -> int:
        if scope.chat_number is None:
            stored = "SELECT MAX(number) FROM chats WHERE application_id = %s"
            args: tuple[Any, ...] = (scope.application_id,)
        else:
            stored = (
                "SELECT MAX(m.number) FROM chats c JOIN messages m ON m.chat_id = c.id"
                " WHERE c.application_id = %s AND c.number = %s"
            )
            args = (scope.application_id, scope.chat_number)
        row = await self._fetchone(
            f"SELECT GREATEST(COALESCE(({stored}), 0), COALESCE((SELECT reserved_upto FROM number_reservations"
            " WHERE scope = %s), 0))",
            (*args, scope.key),
        )
        return int(row[0]) if row else 0

    async def reserve_numbers(self, scope: NumberScope, upto: int) -> int:
        async def reserve(cursor: aiomysql.Cursor) -> int:
            # GREATEST(...) with the value passed twice, not VALUES(): deprecated on MySQL 8,
            # and its replacement (``AS new``) does not exist on MariaDB.
            await cursor.execute(
                "INSERT INTO number_reservations (scope, reserved_upto) VALUES (%s, %s)"
                " ON DUPLICATE KEY UPDATE reserved_upto = GREATEST(reserved_upto, %s)",
                (scope.key, upto, upto),
            )
            await cursor.execute("SELECT reserved_upto FROM number_reservations WHERE scope = %s", (scope.key,))
            return int((await cursor.fetchone())[0])

        return await self._run(reserve, commit=True)

    async def reconcile_counts(self, limit: int = 10_000) -> CountsReconciled:
        async def fold(cursor: aiomysql.Cursor) -> CountsReconciled:
            return await writes.fold_deltas(cursor, limit)

        return await self._run(fold, commit=True)

    async def documents_after(self, cursor: int, limit: int) -> tuple[int, list[SearchDocument]]:
        async def query(db: aiomysql.Cursor) -> list[Sequence[Any]]:
            await db.execute(
                "SELECT m.id, c.application_id, c.number, m.number, m.content, m.created_at, m.revision"
                " FROM messages m JOIN chats c ON c.id = m.chat_id WHERE m.id > %s ORDER BY m.id LIMIT %s",
                (cursor, limit),
            )
            return list(await db.fetchall())

        rows = await self._run(query, commit=False)
        documents = [SearchDocument(int(r[1]), int(r[2]), int(r[3]), r[4], from_db(r[5]), int(r[6])) for r in rows]
        return (int(rows[-1][0]) if rows else cursor), documents

    async def recount_all(self) -> None:
        await self._run(writes.recount, commit=True, seconds=600.0)

    # Transactions

    async def _fetchone(self, sql: str, args: Sequence[Any]) -> Sequence[Any] | None:
        async def query(cursor: aiomysql.Cursor) -> Sequence[Any] | None:
            await cursor.execute(sql, args)
            row: Sequence[Any] | None = await cursor.fetchone()
            return row

        return await self._run(query, commit=False)

    async def _run(self, work: Work[T], *, commit: bool, seconds: float | None = None) -> T:
        """Run ``work`` in one transaction, retrying it when that is known to be safe.

        Retried: a lock conflict InnoDB rolled back (a few times), and a connection found dead
        before COMMIT was sent (once, on a fresh connection: after a server restart every idle
        connection in the pool is dead). Not retried: a connection lost during COMMIT, whose
        outcome is unknown; it becomes BackendUnavailable like every other connection failure.
        """
        contended = 0
        lost = 0
        while True:
            try:
                async with asyncio.timeout(seconds or self.target.timeout):
                    return await self._attempt(work, commit)
            except _Lost as exc:
                lost += 1
                if lost > 1:
                    raise BackendUnavailable(f"mysql connection lost: {exc.__cause__}") from exc.__cause__
                await self._discard_idle_connections()
            except TimeoutError as exc:
                raise BackendUnavailable("mysql did not answer in time") from exc
            except pymysql.err.OperationalError as exc:
                contended += 1
                if not _is_contended(exc):
                    raise
                if contended >= _CONTENDED_ATTEMPTS:
                    raise BackendUnavailable(f"mysql lock contention: {exc}") from exc
                logger.info("mysql lock conflict, retrying the transaction: %s", exc)
                await asyncio.sleep(0.01 * 2**contended)

    async def _attempt(self, work: Work[T], commit: bool) -> T:
        pool = self._pool
        if pool is None:
            raise RuntimeError("MysqlStore used before open()")
        try:
            conn = await pool.acquire()
        except Exception as exc:
            if is_connection_error(exc):
                raise BackendUnavailable(f"mysql unreachable: {exc}") from exc
            raise
        try:
            return await self._transaction(conn, work, commit)
        finally:
            pool.release(conn)

    @staticmethod
    async def _transaction(conn: aiomysql.Connection, work: Work[T], commit: bool) -> T:
        try:
            async with conn.cursor() as cursor:
                result = await work(cursor)
        except BaseException as exc:
            if isinstance(exc, pymysql.MySQLError) and not is_connection_error(exc):
                await _rollback_or_close(conn)
                raise
            conn.close()  # lost, cancelled or failed mid-protocol: never reuse this connection
            if is_connection_error(exc):
                raise _Lost(str(exc)) from exc
            raise
        try:
            await (conn.commit() if commit else conn.rollback())
        except BaseException as exc:
            conn.close()
            if commit and is_connection_error(exc):
                raise BackendUnavailable(f"mysql connection lost during commit: {exc}") from exc
            if commit or not is_connection_error(exc):
                raise
        return result

    async def _discard_idle_connections(self) -> None:
        if self._pool is None:
            return
        try:
            await self._pool.clear()
        except Exception:  # closing a dead socket may fail; what matters is that it is gone
            logger.debug("closing idle mysql connections failed", exc_info=True)


async def _rollback_or_close(conn: aiomysql.Connection) -> None:
    try:
        await conn.rollback()
    except Exception:
        conn.close()
