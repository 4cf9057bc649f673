"""Backing up and putting back the MySQL/MariaDB store, with the server's own client tools.

The backup is ``mariadb-dump --single-transaction``: one consistent-snapshot transaction
(REPEATABLE READ) over InnoDB tables, taken while chatd writes, with no table locks. What breaks
such a dump is DDL run meanwhile by another connection (ALTER, CREATE, DROP, RENAME or TRUNCATE
TABLE: a table changed under the snapshot is read as it is now, or fails with "table definition
has changed"). chatd runs DDL only in ``chatd migrate``, which holds the named lock
``chatd_migrate:<database>``; the backup holds the same lock for the whole dump, so a migration
waits for the backup to finish and a backup for the migration. (A restore's own DDL runs with
every chatd process stopped.) The dump is compressed as it streams; it must end with the
client's "Dump completed" line, or the backup fails.

A restore loads the dump into a staging database with the ``mariadb`` client, checks it, then
moves its tables into the store's database in one ``RENAME TABLE`` statement (atomic: a failure
at any step leaves the store as it was). A store that is replaced (``--force``) moves, in the
same statement, into a database of its own beside it (``<database>__replaced_<stamp>``).

Passwords reach the clients in a 0600 option file (``--defaults-extra-file``), never on their
command line, where any user of the machine could read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiomysql

from chatd import __version__
from chatd.backends.mysql_db import MysqlTarget
from chatd.backups.manifest import PACE_WINDOW_SECONDS, BackupRefused, Manifest, describe
from chatd.ports import Store

ENGINE = "mysql"
DATA = "store.sql.gz"
COMPRESSION = 3
# The line mariadb-dump (and mysqldump) ends a complete dump with.
_COMPLETED = b"-- Dump completed"
# The tables a restore requires in the dump before it moves anything.
_REQUIRED = {"applications", "chats", "messages", "number_counters", "schema_migrations"}
_CHUNK = 1 << 20


class ClientFailed(RuntimeError):
    """A MariaDB client tool (mariadb-dump, mariadb) failed; its own message is included."""


def client(*names: str) -> str:
    """The first of ``names`` found on PATH: the MariaDB tool, or MySQL's name for it."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise ClientFailed(
        f"none of {', '.join(names)} is installed: chatd's backup and restore on MySQL/MariaDB use the"
        " server's client tools (Debian: apt-get install mariadb-client)"
    )


async def back_up(target: MysqlTarget, store: Store, folder: Path, started: datetime, now: Any) -> Manifest:
    """Dump the store's database into ``folder`` and describe it; ``now()`` is read when it is done."""
    async with _connection(target) as conn, conn.cursor() as cursor:
        # The migration lock (MysqlStore.migrate): no chatd DDL while the snapshot is open.
        await cursor.execute("SELECT GET_LOCK(%s, 120)", (migration_lock(target),))
        if (await cursor.fetchone())[0] != 1:
            raise ClientFailed("timed out waiting for a migration to finish")
        try:
            await _dump(target, folder / DATA)
        finally:
            await cursor.execute("SELECT RELEASE_LOCK(%s)", (migration_lock(target),))
        await cursor.execute(
            "SELECT (SELECT COUNT(*) FROM applications), (SELECT COUNT(*) FROM chats), (SELECT COUNT(*) FROM messages)"
        )
        applications, chats, messages = await cursor.fetchone()
        await cursor.execute("SELECT name FROM schema_migrations ORDER BY name")
        schema = [row[0] for row in await cursor.fetchall()]
    # Read after the dump: each at least what the dump holds, which is what a restore needs.
    sequences = await store.sequences()
    pace = await store.sequences_taken_since(started - timedelta(seconds=PACE_WINDOW_SECONDS))
    return Manifest(
        engine=ENGINE,
        chatd_version=__version__,
        schema=schema,
        taken_at=started,
        finished_at=now(),
        counts={"applications": int(applications), "chats": int(chats), "messages": int(messages)},
        sequences=sequences,
        taken_last_hour=pace,
        files=describe(folder, [DATA]),
        store_identity=await store.identity(),
        notes={"counts": "read once the dump was complete: at least what it holds"},
    )


def migration_lock(target: MysqlTarget) -> str:
    return f"chatd_migrate:{target.database}"[:64]


async def _dump(target: MysqlTarget, into: Path) -> None:
    with _option_file(target) as options:
        process = await asyncio.create_subprocess_exec(
            client("mariadb-dump", "mysqldump"),
            f"--defaults-extra-file={options}",
            "--single-transaction",
            "--quick",
            "--skip-lock-tables",
            "--no-tablespaces",
            # Tokens, scopes and keys are VARBINARY: written as hex, they survive any client charset.
            "--hex-blob",
            "--default-character-set=utf8mb4",
            target.database,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        errors = asyncio.create_task(process.stderr.read())
        tail = b""
        compressor = zlib.compressobj(COMPRESSION, zlib.DEFLATED, 31)  # 31: the gzip format
        with into.open("wb") as out:
            while chunk := await process.stdout.read(_CHUNK):
                tail = (tail + chunk)[-256:]
                out.write(compressor.compress(chunk))
            out.write(compressor.flush())
            out.flush()
            os.fsync(out.fileno())
        code = await process.wait()
        message = (await errors).decode(errors="replace").strip()
    if code != 0:
        raise ClientFailed(f"mariadb-dump failed (exit {code}): {message}")
    if _COMPLETED not in tail:
        raise ClientFailed(f"mariadb-dump stopped before the end of the dump: {message or 'no message'}")


async def applications_in(target: MysqlTarget) -> int:
    """How many applications the store's database holds (0 with no database or no tables yet)."""
    async with _connection(target, database=None) as conn, conn.cursor() as cursor:
        if not await _tables(cursor, target.database):
            return 0
        with contextlib.suppress(aiomysql.ProgrammingError):  # tables of something else than chatd
            await cursor.execute(f"SELECT COUNT(*) FROM {_quote(target.database)}.applications")
            return int((await cursor.fetchone())[0])
        return 0


async def replication_role(target: MysqlTarget) -> str | None:
    """Why the server cannot take writes as a primary (read-only, still a replica), or None."""
    async with _connection(target, database=None) as conn, conn.cursor(aiomysql.DictCursor) as cursor:
        await cursor.execute("SELECT @@GLOBAL.read_only AS read_only")
        if int((await cursor.fetchone())["read_only"]):
            return "it is read-only (SET GLOBAL read_only = OFF once it is promoted)"
        await cursor.execute("SHOW SLAVE STATUS")
        status = await cursor.fetchone()
        if status and (status.get("Slave_IO_Running") == "Yes" or status.get("Slave_SQL_Running") == "Yes"):
            source = f"{status.get('Master_Host')}:{status.get('Master_Port')}"
            return f"it still replicates from {source} (STOP SLAVE first)"
        return None


async def put_back(folder: Path, target: MysqlTarget, stamp: str) -> str | None:
    """Make the dump in ``folder`` the store's database; return the database the old tables went to.

    The old tables are dropped if they held no application, else kept in that database.
    """
    staging = f"{target.database}__restoring"[:64]
    async with _connection(target, database=None) as conn, conn.cursor() as cursor:
        await _drop_database(cursor, staging)
        await cursor.execute(f"CREATE DATABASE {_quote(staging)} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        try:
            await _load(folder / DATA, target, staging)
            loaded = set(await _tables(cursor, staging))
            if not _REQUIRED <= loaded:
                raise BackupRefused(f"the dump lacks chatd's tables: {', '.join(sorted(_REQUIRED - loaded))}")
            replaced = await _swap(cursor, target.database, staging, loaded, stamp)
        finally:
            await _drop_database(cursor, staging)
    return replaced


async def _swap(cursor: aiomysql.Cursor, database: str, staging: str, loaded: set[str], stamp: str) -> str | None:
    if not await _database_exists(cursor, database):
        await cursor.execute(f"CREATE DATABASE {_quote(database)} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    current = await _tables(cursor, database)
    held = await applications_count(cursor, database) if "applications" in current else 0
    replaced = f"{database}__replaced_{stamp}"[:64] if current else None
    moves = [f"{_quote(database)}.{_quote(t)} TO {_quote(replaced)}.{_quote(t)}" for t in current if replaced]
    moves += [f"{_quote(staging)}.{_quote(t)} TO {_quote(database)}.{_quote(t)}" for t in sorted(loaded)]
    if replaced:
        await cursor.execute(f"CREATE DATABASE {_quote(replaced)}")
    await cursor.execute("RENAME TABLE " + ", ".join(moves))  # one statement: all or nothing
    if replaced and not held:
        await cursor.execute(f"DROP DATABASE {_quote(replaced)}")
        return None
    return replaced


async def applications_count(cursor: aiomysql.Cursor, database: str) -> int:
    await cursor.execute(f"SELECT COUNT(*) FROM {_quote(database)}.applications")
    return int((await cursor.fetchone())[0])


async def _load(dump: Path, target: MysqlTarget, database: str) -> None:
    with _option_file(target) as options:
        process = await asyncio.create_subprocess_exec(
            client("mariadb", "mysql"),
            f"--defaults-extra-file={options}",
            "--default-character-set=utf8mb4",
            "--batch",
            database,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stderr is not None
        errors = asyncio.create_task(process.stderr.read())
        tail = b""
        # Whether the whole dump was read: then one without its last line is truncated, whatever
        # the client made of the statement it stops in.
        read_whole = False
        with gzip.open(dump, "rb") as source:
            while True:
                try:
                    chunk = source.read(_CHUNK)
                except (OSError, EOFError, zlib.error) as exc:
                    process.kill()
                    await process.wait()
                    raise BackupRefused(f"the backup's dump cannot be read: {exc}") from exc
                if not chunk:
                    read_whole = True
                    break
                tail = (tail + chunk)[-256:]
                try:
                    process.stdin.write(chunk)
                    await process.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    break  # the client stopped reading: its exit code and message say why
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.close()
            await process.stdin.wait_closed()
        code = await process.wait()
        message = (await errors).decode(errors="replace").strip()
    if read_whole and _COMPLETED not in tail:
        raise BackupRefused("the backup's dump stops before its end: it is truncated")
    if code != 0:
        raise ClientFailed(f"loading the dump failed (mariadb exit {code}): {message}")
    if _COMPLETED not in tail:
        raise BackupRefused("the backup's dump stops before its end: it is truncated")


async def _database_exists(cursor: aiomysql.Cursor, name: str) -> bool:
    await cursor.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (name,))
    return bool((await cursor.fetchone())[0])


async def _drop_database(cursor: aiomysql.Cursor, name: str) -> None:
    # Looked up first: DROP DATABASE IF EXISTS of none is a warning, which aiomysql raises in Python.
    if await _database_exists(cursor, name):
        await cursor.execute(f"DROP DATABASE {_quote(name)}")


async def _tables(cursor: aiomysql.Cursor, database: str) -> list[str]:
    await cursor.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY table_name", (database,)
    )
    return [row[0].decode() if isinstance(row[0], bytes) else row[0] for row in await cursor.fetchall()]


@contextlib.asynccontextmanager
async def _connection(target: MysqlTarget, database: str | None = "") -> AsyncIterator[Any]:
    conn = await aiomysql.connect(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password,
        db=target.database if database == "" else database,
        autocommit=True,
        charset="utf8mb4",
        connect_timeout=target.connect_timeout,
    )
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _option_file(target: MysqlTarget) -> Iterator[str]:
    """A [client] option file for the MariaDB tools, readable by this user only, deleted after."""

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    descriptor, path = tempfile.mkstemp(prefix="chatd-client-", suffix=".cnf")
    try:
        with os.fdopen(descriptor, "w") as out:  # mkstemp made it 0600
            out.write(
                f"[client]\nhost={quoted(target.host)}\nport={target.port}\n"
                f"user={quoted(target.user)}\npassword={quoted(target.password)}\n"
                # TCP even for "localhost", which the clients would take as the Unix socket.
                "protocol=TCP\n"
            )
        yield path
    finally:
        os.unlink(path)


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
