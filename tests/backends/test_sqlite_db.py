"""The embedded database's group commit: transactions asked for together share one commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from chatd.backends.sqlite_db import SqliteDatabase


async def test_concurrent_transactions_commit_together_and_fail_alone(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "group.db"))
    await db.open()
    try:
        await db.transaction(lambda conn: conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)"))

        def insert(n: int):  # type: ignore[no-untyped-def]
            def work(conn: sqlite3.Connection) -> int:
                conn.execute("INSERT INTO t VALUES (?)", (n,))
                if n % 10 == 3:
                    raise ValueError(f"transaction {n} fails after its insert")
                return n

            return work

        statements: list[str] = []
        await db.transaction(lambda conn: conn.set_trace_callback(statements.append))
        results = await asyncio.gather(*(db.transaction(insert(n)) for n in range(50)), return_exceptions=True)
        for n, result in enumerate(results):
            assert isinstance(result, ValueError) if n % 10 == 3 else result == n
        stored = await db.read(lambda conn: [row[0] for row in conn.execute("SELECT n FROM t ORDER BY n")])
        assert stored == [n for n in range(50) if n % 10 != 3]  # the failed ones rolled back alone
        # 50 transactions asked for at once took the write lock a few times, not 50.
        assert 1 <= statements.count("BEGIN IMMEDIATE") <= 3, statements.count("BEGIN IMMEDIATE")
    finally:
        await db.close()


async def test_reads_run_beside_a_write_and_beside_a_slow_read(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "readers.db"))
    await db.open()
    try:
        await db.transaction(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
        await db.transaction(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        release_write, release_read = threading.Event(), threading.Event()

        def slow_write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (2)")
            release_write.wait(10)

        def slow_read(conn: sqlite3.Connection) -> None:
            release_read.wait(10)

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])

        writing = asyncio.create_task(db.transaction(slow_write))
        reading = asyncio.create_task(db.read(slow_read))
        try:
            # Both slow ones hold their threads; another read still answers, from the last commit.
            assert await asyncio.wait_for(db.read(count), 5) == 1
        finally:
            release_write.set()
            release_read.set()
        await asyncio.gather(writing, reading)
        assert await db.read(count) == 2
    finally:
        await db.close()
