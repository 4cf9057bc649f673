"""The embedded database reports SQLite's "not now" errors as BackendUnavailable, by cause.

Each error is the engine's own, provoked for real: another connection holding the write lock, a
database at its page limit, a disk (a small tmpfs) full, a connection that may not write. Errors
in the work itself (a constraint) pass through as they are.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatd.backends.sqlite_db import SqliteDatabase, outage_of
from chatd.errors import BackendUnavailable


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(str(tmp_path / "outages.db"))
    await database.open()
    await database.transaction(lambda conn: conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, b BLOB)"))
    try:
        yield database
    finally:
        await database.close()


def insert(n: int, size: int = 1) -> object:
    return lambda conn: conn.execute("INSERT INTO t VALUES (?, zeroblob(?))", (n, size))


async def count(db: SqliteDatabase) -> int:
    return int(await db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]))


async def test_a_write_lock_held_past_the_busy_timeout_is_locked(db: SqliteDatabase) -> None:
    await db.transaction(lambda conn: conn.execute("PRAGMA busy_timeout=50"))
    other = sqlite3.connect(db.path, isolation_level=None)  # another process, say a second worker
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendUnavailable) as raised:
            await db.transaction(insert(1))  # type: ignore[arg-type]
        assert (raised.value.backend, raised.value.cause) == ("sqlite", "locked")
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        assert raised.value.__cause__.sqlite_errorcode == sqlite3.SQLITE_BUSY
        other.execute("ROLLBACK")
        await db.transaction(insert(1))  # type: ignore[arg-type]
        assert await count(db) == 1
    finally:
        other.close()


async def test_a_database_at_its_page_limit_is_disk_full_and_fails_alone(db: SqliteDatabase) -> None:
    pages = await db.read(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await db.transaction(lambda conn: conn.execute(f"PRAGMA max_page_count={pages + 2}"))
    # Asked for together, the two share a group commit: the one that does not fit fails alone.
    big, small = await asyncio.gather(
        db.transaction(insert(1, 100_000)),  # type: ignore[arg-type]
        db.transaction(insert(2)),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert isinstance(big, BackendUnavailable), big
    assert (big.backend, big.cause) == ("sqlite", "disk_full")
    assert "database or disk is full" in str(big)
    assert small is None
    assert await db.read(lambda conn: [row[0] for row in conn.execute("SELECT n FROM t")]) == [2]


async def test_a_connection_that_may_not_write_is_read_only(db: SqliteDatabase) -> None:
    await db.transaction(lambda conn: conn.execute("PRAGMA query_only=ON"))
    with pytest.raises(BackendUnavailable) as raised:
        await db.transaction(insert(1))  # type: ignore[arg-type]
    assert (raised.value.backend, raised.value.cause) == ("sqlite", "read_only")


async def test_errors_in_the_work_itself_are_not_outages(db: SqliteDatabase) -> None:
    await db.transaction(insert(1))  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        await db.transaction(insert(1))  # type: ignore[arg-type]
    with pytest.raises(sqlite3.OperationalError):
        await db.read(lambda conn: conn.execute("SELECT nothing FROM nowhere"))


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (sqlite3.SQLITE_IOERR_WRITE, "io_error"),
        (sqlite3.SQLITE_IOERR, "io_error"),
        (sqlite3.SQLITE_FULL, "disk_full"),
        (sqlite3.SQLITE_BUSY_SNAPSHOT, "locked"),
        (sqlite3.SQLITE_LOCKED, "locked"),
        (sqlite3.SQLITE_READONLY_DBMOVED, "read_only"),
        (sqlite3.SQLITE_CANTOPEN, "cannot_open"),
        (sqlite3.SQLITE_CONSTRAINT_UNIQUE, None),
        (sqlite3.SQLITE_ERROR, None),
    ],
)
def test_extended_codes_are_read_by_their_primary_code(code: int, cause: str | None) -> None:
    # An I/O error cannot be provoked on demand: the exception as the sqlite3 module makes it.
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = code
    exc.sqlite_errorname = "SQLITE_TEST"
    outage = outage_of(exc)
    assert (outage.cause if outage else None) == cause
    assert outage_of(ValueError("not sqlite's")) is None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that fills up for real."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (make test runs as root)")
    folder = tmp_path / "small-disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


async def test_a_full_disk_is_disk_full_and_writes_resume_when_space_is_back(small_disk: Path) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 600_000)
    db = SqliteDatabase(str(small_disk / "chatd.db"))
    await db.open()
    try:
        await db.transaction(lambda conn: conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, b BLOB)"))
        stored = 0
        with pytest.raises(BackendUnavailable) as raised:
            for n in range(1, 1000):
                await db.transaction(insert(n, 4000))  # type: ignore[arg-type]
                stored = n
        assert (raised.value.backend, raised.value.cause) == ("sqlite", "disk_full")
        assert stored > 0
        assert await count(db) == stored  # reads go on; every write that answered is there
        filler.unlink()
        await db.transaction(insert(stored + 1, 4000))  # type: ignore[arg-type]
        assert await count(db) == stored + 1
    finally:
        await db.close()
