"""A SQLite database file, shared by the embedded backends that keep their tables in it.

Each transaction runs as one plain function on the database's own writer thread: one thread
hop per transaction instead of one per statement, and no other coroutine can slip a statement
into a transaction in progress. Reads run on a few reader threads, each with a connection of
its own, so a GET never queues behind a write transaction, nor behind one slow read (WAL mode:
readers see the last commit and never wait). Other processes are kept out by SQLite's own file
lock (writers queue behind ``busy_timeout``).

Whoever makes a database opens and closes it: the registry for the file the store,
cache, lock and queue share (``Backends.connections``), or a backend made with a path of its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from chatd.backends.lifecycle import Lifecycle
from chatd.errors import BackendUnavailable

T = TypeVar("T")
# Seconds since the epoch, as ``time.time`` answers: what the embedded cache, lock and
# queue read for expiries and leases. Injected (as the service's clock is), so a test moves it
# instead of waiting for a lease or a TTL to run out.
EpochClock = Callable[[], float]
# A write transaction waiting for its turn: the function to run, and its caller's future.
# Reads at once per database: a slow search holds one reader, not every GET of the process.
READERS = 4
# How long a statement waits for another connection's lock (another process's write) before SQLITE_BUSY.
BUSY_TIMEOUT_SECONDS = 10.0
_Transaction = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]

# SQLite's primary result codes that mean "not now" rather than "not this": another connection
# holds the lock (past busy_timeout), the disk is full or failing, the file cannot be written or
# opened (a read-only mount, a directory gone), memory ran out. An extended code (SQLITE_IOERR_WRITE,
# SQLITE_READONLY_DBMOVED) carries its primary code in its low byte.
_OUTAGE_CAUSES = {
    sqlite3.SQLITE_BUSY: "locked",
    sqlite3.SQLITE_LOCKED: "locked",
    sqlite3.SQLITE_PROTOCOL: "locked",
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_CANTOPEN: "cannot_open",
    sqlite3.SQLITE_NOMEM: "oom",
}


def outage_of(exc: BaseException) -> BackendUnavailable | None:
    """The BackendUnavailable that a SQLite error means, or None for an error in the work itself."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or not isinstance(code, int):
        return None
    cause = _OUTAGE_CAUSES.get(code & 0xFF)
    if cause is None:
        return None
    name = getattr(exc, "sqlite_errorname", str(code))
    return BackendUnavailable(f"sqlite {cause}: {exc} ({name})", backend="sqlite", cause=cause)


async def _translated(work: Awaitable[T]) -> T:
    """``await work``, an outage raised as BackendUnavailable (the SQLite error as its cause)."""
    try:
        return await work
    except sqlite3.Error as exc:
        outage = outage_of(exc)
        if outage is None:
            raise
        raise outage from exc


def path_from_url(url: str) -> str:
    """``sqlite:///./chatd.db`` -> ``./chatd.db``; ``sqlite:///:memory:`` -> ``:memory:``."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"not a sqlite URL: {url}")
    path = url[len("sqlite://") :]
    return path[1:] if path.startswith("/") and not path.startswith("//") else path


class SqliteDatabase(Lifecycle):
    """A writer connection on a thread of its own, and a few reader threads with one connection each."""

    def __init__(self, path: str):
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # Readers: a few threads, each with a connection of its own, made on first use. An
        # in-memory database exists once per connection: it reads through the writer.
        self._reader: ThreadPoolExecutor | None = None
        self._read_local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        # Write transactions waiting for the writer thread, and whether it is busy with a group.
        self._queued: list[_Transaction] = []
        self._writing = False

    @property
    def key(self) -> str:
        """What names the file: backends of one file share one database (``:memory:`` is one too)."""
        return self.path if self.path == ":memory:" else str(Path(self.path).resolve())

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        await self._submit(self._connect)
        if self.path != ":memory:":
            self._reader = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="sqlite-read")

    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # The busy timeout from the start (Python's default is 5 s): the journal mode below takes a
        # lock, and other processes starting on the same file at once (each migrating it, on a busy
        # machine) held it past 5 s once, and a process exited at start with SQLITE_BUSY.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only an OS crash may lose
        # the last transactions. The embedded default trades that for write throughput.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn

    def _reader_connection(self) -> sqlite3.Connection:
        """This reader thread's connection, made on its first read."""
        conn: sqlite3.Connection | None = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA query_only=ON")
            self._read_local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

    async def close(self) -> None:
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        loop = asyncio.get_running_loop()
        if reader is not None:
            reader.shutdown(wait=True)  # no read runs after this: their connections can close here
            with self._read_conns_lock:
                read_conns, self._read_conns = self._read_conns, []
            self._read_local = threading.local()
            for read_conn in read_conns:
                read_conn.close()
        if conn is not None:
            await loop.run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError("database is closed")
        return await _translated(asyncio.get_running_loop().run_in_executor(self._executor, fn))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the reader, outside any explicit transaction (each statement autocommits).

        It sees every transaction committed before it was called.
        """
        if self._reader is None:
            return await self._submit(lambda: _no_cursor(fn(self._require())))
        return await _translated(
            asyncio.get_running_loop().run_in_executor(self._reader, lambda: _no_cursor(fn(self._reader_connection())))
        )

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a write transaction; if it raises, none of its changes stay.

        Transactions asked for while the writer is busy are committed together when it is
        free (group commit): one ``BEGIN IMMEDIATE`` ... ``COMMIT`` with each function in a
        savepoint of its own, so one that raises rolls back alone. The file's write lock,
        which the api and worker processes take in turns, is then taken once per group
        instead of once per transaction, and the event loop is woken once per group.

        An outage (the lock busy past ``busy_timeout``, a full disk, an I/O error, a read-only
        file) raises BackendUnavailable; any other error is the function's own and raised as it is.
        """
        if self._executor is None:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._queued.append((fn, done))
        if not self._writing:
            self._write_queued(loop)
        return await _translated(done)

    def _write_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        group, self._queued = self._queued, []
        self._writing = bool(group)
        if not group or self._executor is None:
            for _, done in group:
                if not done.done():
                    done.set_exception(RuntimeError("database is closed"))
            return
        written = loop.run_in_executor(self._executor, self._write_group, group)
        written.add_done_callback(lambda future: self._settle(loop, group, future))

    def _write_group(self, group: list[_Transaction]) -> list[tuple[bool, Any]]:
        """On the writer thread: every function of the group, each in a savepoint, one commit."""
        conn = self._require()
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[tuple[bool, Any]] = []
        try:
            for fn, done in group:
                if done.cancelled():  # its caller stopped waiting before it started
                    outcomes.append((False, asyncio.CancelledError()))
                    continue
                conn.execute("SAVEPOINT one")
                try:
                    result = _no_cursor(fn(conn))
                except Exception as exc:
                    if not conn.in_transaction:
                        # SQLite rolled back the whole transaction itself (SQLITE_FULL, SQLITE_IOERR,
                        # SQLITE_NOMEM may): the savepoint is gone, and with it the group's work.
                        raise
                    conn.execute("ROLLBACK TO one")
                    outcomes.append((False, exc))
                else:
                    outcomes.append((True, result))
                conn.execute("RELEASE one")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def _settle(self, loop: asyncio.AbstractEventLoop, group: list[_Transaction], written: asyncio.Future[Any]) -> None:
        failure = written.exception() if not written.cancelled() else asyncio.CancelledError()
        outcomes = [(False, failure)] * len(group) if failure is not None else written.result()
        for (_, done), (ok, value) in zip(group, outcomes):
            if done.done():
                continue
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)
        self._write_queued(loop)

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("database is closed")
        return self._conn


class SqliteBacked(Lifecycle):
    """The lifecycle every embedded backend shares: its tables made on open, in a database it may share.

    Made with a path, the backend has a database of its own and opens and closes it. Made with
    a database, it shares that with the other backends of the file, and whoever made it (the
    registry) opens it before them and closes it after them: nobody counts users.
    """

    schema: tuple[str, ...] = ()

    def __init__(self, database: SqliteDatabase | str, clock: EpochClock = time.time):
        self._owns_db = isinstance(database, str)
        self.db = SqliteDatabase(database) if isinstance(database, str) else database
        self.clock = clock

    async def open(self) -> None:
        if self._owns_db:
            await self.db.open()
        if self.schema:
            await self.db.transaction(self._create_schema)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        for statement in self.schema:
            conn.execute(statement)

    async def close(self) -> None:
        if self._owns_db:
            await self.db.close()

    async def ping(self) -> None:
        await self.db.read(lambda conn: conn.execute("SELECT 1").fetchone())


def _no_cursor(result: T) -> T:
    """Close a cursor here, on the database's thread.

    A cursor handed back to the event loop would be finalized there when dropped, touching
    the connection from a second thread while this one uses it (SQLITE_MISUSE).
    """
    if isinstance(result, sqlite3.Cursor):
        result.close()
        return None  # type: ignore[return-value]
    return result
