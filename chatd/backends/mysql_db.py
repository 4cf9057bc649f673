"""A MySQL 8 / MariaDB 10.11 database through an aiomysql pool: connections, retries, transactions.

The SQL lives in the store (``mysql_store.py`` for reads and migrations, ``mysql_writes.py`` for
the batch writes); this module only knows how to run a unit of work on one pooled connection,
at READ COMMITTED, in one transaction, and when it is safe to run it again. It is to the MySQL
store what ``sqlite_db.py`` is to the SQLite one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import aiomysql
import pymysql

from chatd.backends.lifecycle import Lifecycle
from chatd.errors import BackendUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[aiomysql.Cursor], Awaitable[T]]

# Client codes for "unreachable / connection lost", and server codes for a server going away
# (1053 shutdown in progress, 1927 MariaDB connection killed, 4031 MySQL idle disconnect) or
# turning clients away (1040 too many connections).
_LOST_CODES = frozenset({2002, 2003, 2006, 2013, 2055, 1040, 1053, 1927, 4031})
# InnoDB rolled the transaction back (1213 deadlock) or gave up waiting for a lock (1205).
_CONTENDED_CODES = frozenset({1205, 1213})
_CONTENDED_ATTEMPTS = 5

# What each "not now" code is reported as (BackendUnavailable.cause). Besides the codes above:
# network errors mid-query (1158-1161), too many connections (1040; 1203 and 1226 per user),
# a full table or disk (1114 ER_RECORD_FILE_FULL, 1021 ER_DISK_FULL), a server in read-only mode
# (1836 ER_READ_ONLY_MODE, 1874 ER_INNODB_READ_ONLY; 1036 "Table is read only", as MariaDB answers
# with innodb_read_only), out of memory (1037, 1038, 1041), a statement timeout (MariaDB 1969
# max_statement_time, MySQL 3024 max_execution_time).
_OUTAGE_CAUSES = {
    **dict.fromkeys((2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031, 1158, 1159, 1160, 1161), "connection"),
    **dict.fromkeys((1040, 1203, 1226), "too_many_connections"),
    1205: "locked",
    1213: "deadlock",
    **dict.fromkeys((1114, 1021), "disk_full"),
    **dict.fromkeys((1836, 1874, 1036), "read_only"),
    **dict.fromkeys((1037, 1038, 1041), "oom"),
    **dict.fromkeys((1969, 3024), "timeout"),
}
# Codes that carry the operating system's errno in their text only: 3 EE_WRITE ("Error writing
# file ... (Errcode: 28 ...)"), 1030 ER_GET_ERRNO ("Got error 28 ... from storage engine"),
# 1180 ER_ERROR_DURING_COMMIT. ENOSPC (28) and EDQUOT (122) are a full disk; other errnos of a
# failed write (EE_WRITE) an I/O error.
_ERRNO_CODES = frozenset({3, 1030, 1180})
_NO_SPACE = re.compile(r"\b(?:errcode|error):? (?:28|122)\b|no space left on device|disk quota exceeded", re.I)
# 1290 ER_OPTION_PREVENTS_STATEMENT names the option: --read-only or --super-read-only here.
_READ_ONLY_OPTION = re.compile(r"read[-_]only", re.I)


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


def to_db(moment: datetime) -> datetime:
    """A naive UTC datetime cut to milliseconds, as DATETIME(3) stores it.

    Cut here rather than by the server, because MySQL rounds extra digits and MariaDB truncates.
    """
    utc = moment.astimezone(UTC)
    return utc.replace(tzinfo=None, microsecond=utc.microsecond // 1000 * 1000)


def from_db(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def token_text(value: bytes | str) -> str:
    """A token as read back: VARBINARY since migration 0002 (bytes), VARCHAR before it."""
    return value.decode() if isinstance(value, bytes | bytearray) else value


def is_connection_error(exc: BaseException) -> bool:
    """True if ``exc`` means the server cannot be reached or the connection is gone."""
    if isinstance(exc, pymysql.err.OperationalError):
        return bool(exc.args) and exc.args[0] in _LOST_CODES
    return isinstance(exc, (pymysql.err.InterfaceError, OSError))  # OSError: ConnectionError, TimeoutError


def outage_cause(exc: BaseException) -> str | None:
    """Why ``exc`` means "the server cannot do this now" (a BackendUnavailable cause), or None."""
    if isinstance(exc, pymysql.MySQLError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        text = str(exc.args[1]) if len(exc.args) > 1 else ""
        if code is None or code == 0:  # pymysql's "(0, '')": the connection is closed
            return "connection" if isinstance(exc, pymysql.err.InterfaceError) else None
        if code in _OUTAGE_CAUSES:
            return _OUTAGE_CAUSES[code]
        if code == 1290 and _READ_ONLY_OPTION.search(text):
            return "read_only"
        if code in _ERRNO_CODES and _NO_SPACE.search(text):
            return "disk_full"
        if code == 3:
            return "io_error"
        return None
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):  # ConnectionError and the socket errors pymysql lets through
        return "connection"
    return None


def outage_of(exc: BaseException, what: str = "") -> BackendUnavailable | None:
    """The BackendUnavailable ``exc`` means, or None if it is an error in the work itself."""
    cause = outage_cause(exc)
    if cause is None:
        return None
    return BackendUnavailable(f"mysql {what or cause}: {exc}", backend="mysql", cause=cause)


def _is_contended(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in _CONTENDED_CODES


class _Lost(Exception):
    """The connection died before COMMIT was sent: nothing was applied, a retry is safe."""


class MysqlDatabase(Lifecycle):
    """A pool of connections to one database; ``run`` does a unit of work in one transaction."""

    def __init__(self, target: MysqlTarget):
        self.target = target
        self._pool: aiomysql.Pool | None = None

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
            if (outage := outage_of(exc, "unreachable")) is not None:
                raise outage from exc
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

    async def fetchone(self, sql: str, args: Sequence[Any]) -> Sequence[Any] | None:
        """One row of a read-only query, or None."""

        async def query(cursor: aiomysql.Cursor) -> Sequence[Any] | None:
            await cursor.execute(sql, args)
            row: Sequence[Any] | None = await cursor.fetchone()
            return row

        return await self.run(query, commit=False)

    async def run(self, work: Work[T], *, commit: bool, seconds: float | None = None) -> T:
        """Run ``work`` in one transaction, retrying it when that is known to be safe.

        Retried: a lock conflict InnoDB rolled back (a few times), and a connection found dead
        before COMMIT was sent (once, on a fresh connection: after a server restart every idle
        connection in the pool is dead). Not retried: a connection lost during COMMIT, whose
        outcome is unknown; it becomes BackendUnavailable like every other connection failure.
        So do the conflicts left after the retries, a full table or disk, a read-only server,
        too many connections (``outage_cause``); other errors are the work's own.
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
                    raise BackendUnavailable(
                        f"mysql connection lost: {exc.__cause__}", backend="mysql", cause="connection"
                    ) from exc.__cause__
                await self._discard_idle_connections()
            except TimeoutError as exc:
                raise BackendUnavailable("mysql did not answer in time", backend="mysql", cause="timeout") from exc
            except pymysql.MySQLError as exc:
                if _is_contended(exc) and contended + 1 < _CONTENDED_ATTEMPTS:
                    contended += 1
                    logger.info("mysql lock conflict, retrying the transaction: %s", exc)
                    await asyncio.sleep(0.01 * 2**contended)
                    continue
                if (outage := outage_of(exc)) is not None:
                    raise outage from exc
                raise

    async def _attempt(self, work: Work[T], commit: bool) -> T:
        pool = self._pool
        if pool is None:
            raise RuntimeError("MysqlStore used before open()")
        try:
            conn = await pool.acquire()
        except Exception as exc:
            if (outage := outage_of(exc, "unreachable")) is not None:
                raise outage from exc
            raise
        try:
            return await _transaction(conn, work, commit)
        finally:
            pool.release(conn)

    async def _discard_idle_connections(self) -> None:
        if self._pool is None:
            return
        try:
            await self._pool.clear()
        except Exception:  # closing a dead socket may fail; what matters is that it is gone
            logger.debug("closing idle mysql connections failed", exc_info=True)


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
            raise BackendUnavailable(
                f"mysql connection lost during commit: {exc}", backend="mysql", cause="connection"
            ) from exc
        if commit or not is_connection_error(exc):
            raise
    return result


async def _rollback_or_close(conn: aiomysql.Connection) -> None:
    try:
        await conn.rollback()
    except Exception:
        conn.close()
