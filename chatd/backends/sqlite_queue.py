"""A durable job queue in SQLite: the embedded stand-in for RabbitMQ.

A received job is leased, not removed: it becomes visible again when its lease runs out,
so a consumer that dies mid-batch loses nothing. Ack deletes it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from functools import partial

from chatd.backends.sqlite_db import EpochClock, SqliteBacked, SqliteDatabase
from chatd.ports import Delivery

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS embedded_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
    " body BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, visible_at REAL NOT NULL, queued_at REAL)",
    "CREATE INDEX IF NOT EXISTS embedded_jobs_ready ON embedded_jobs (topic, visible_at, id)",
    "CREATE TABLE IF NOT EXISTS embedded_dead_jobs (id INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
    " body BLOB NOT NULL, attempts INTEGER NOT NULL, failed_at REAL NOT NULL)",
)


class SqliteQueue(SqliteBacked):
    """Topics in one table; consumers poll, and are woken at once by publishers in-process."""

    name = "sqlite-queue"
    schema = _SCHEMA

    def __init__(
        self,
        database: SqliteDatabase | str,
        lease_seconds: float = 60.0,
        poll_seconds: float = 0.1,
        clock: EpochClock = time.time,
    ):
        super().__init__(database, clock)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._published: dict[str, asyncio.Event] = {}

    def _event(self, topic: str) -> asyncio.Event:
        return self._published.setdefault(topic, asyncio.Event())

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        super()._create_schema(conn)
        # Files from before ``queued_at`` (the age of the oldest job, for /metrics): their rows
        # keep NULL there, and are left out of the age (they are drained within seconds anyway).
        columns = {row[1] for row in conn.execute("PRAGMA table_info(embedded_jobs)")}
        if "queued_at" not in columns:
            conn.execute("ALTER TABLE embedded_jobs ADD COLUMN queued_at REAL")

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        now = self.clock()
        await self.db.transaction(
            lambda conn: conn.executemany(
                "INSERT INTO embedded_jobs (topic, body, visible_at, queued_at) VALUES (?, ?, ?, ?)",
                [(topic, body, now, now) for body in bodies],
            )
        )
        self._event(topic).set()

    async def receive(self, topic: str, max_batch: int, max_wait: float) -> list[Delivery]:
        # The wait for new jobs is real time (the caller's bound), not the injected clock.
        deadline = time.monotonic() + max_wait
        deliveries: list[Delivery] = []
        while True:
            event = self._event(topic)
            event.clear()
            deliveries += await self.db.transaction(
                partial(self._lease, topic=topic, limit=max_batch - len(deliveries))
            )
            remaining = deadline - time.monotonic()
            if len(deliveries) >= max_batch or remaining <= 0:
                return deliveries
            try:
                await asyncio.wait_for(event.wait(), min(remaining, self.poll_seconds))
            except TimeoutError:
                pass

    def _lease(self, conn: sqlite3.Connection, topic: str, limit: int) -> list[Delivery]:
        now = self.clock()
        rows = conn.execute(
            "SELECT id, body, attempts FROM embedded_jobs WHERE topic = ? AND visible_at <= ? ORDER BY id LIMIT ?",
            (topic, now, limit),
        ).fetchall()
        conn.executemany(
            "UPDATE embedded_jobs SET attempts = attempts + 1, visible_at = ? WHERE id = ?",
            [(now + self.lease_seconds, row[0]) for row in rows],
        )
        return [Delivery(body=bytes(row[1]), attempts=row[2] + 1, tag=row[0]) for row in rows]

    async def ack(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        await self.db.transaction(
            lambda conn: conn.executemany("DELETE FROM embedded_jobs WHERE id = ?", [(d.tag,) for d in deliveries])
        )

    async def retry(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        # A short pause before the next delivery keeps a failing job from spinning.
        visible_at = self.clock() + 0.5
        await self.db.transaction(
            lambda conn: conn.executemany(
                "UPDATE embedded_jobs SET visible_at = ? WHERE id = ?", [(visible_at, d.tag) for d in deliveries]
            )
        )

    async def release(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        # As retry, and the lease's count of this delivery taken back: an outage stopped the work.
        visible_at = self.clock() + 0.5
        await self.db.transaction(
            lambda conn: conn.executemany(
                "UPDATE embedded_jobs SET visible_at = ?, attempts = MAX(attempts - 1, 0) WHERE id = ?",
                [(visible_at, d.tag) for d in deliveries],
            )
        )

    async def dead_letter(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        def move(conn: sqlite3.Connection) -> None:
            now = self.clock()
            for delivery in deliveries:
                conn.execute(
                    "INSERT OR REPLACE INTO embedded_dead_jobs SELECT id, topic, body, attempts, ?"
                    " FROM embedded_jobs WHERE id = ?",
                    (now, delivery.tag),
                )
                conn.execute("DELETE FROM embedded_jobs WHERE id = ?", (delivery.tag,))

        await self.db.transaction(move)

    async def depth(self, topic: str) -> int:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM embedded_jobs WHERE topic = ? AND visible_at <= ?", (topic, self.clock())
            ).fetchone()
        )
        return int(row[0])

    async def dead_letters(self, topic: str) -> list[bytes]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT body FROM embedded_dead_jobs WHERE topic = ? ORDER BY id", (topic,)
            ).fetchall()
        )
        return [bytes(row[0]) for row in rows]

    async def dead_depth(self, topic: str) -> int:
        row = await self.db.read(
            lambda conn: conn.execute("SELECT COUNT(*) FROM embedded_dead_jobs WHERE topic = ?", (topic,)).fetchone()
        )
        return int(row[0])

    async def oldest_age(self, topic: str) -> float | None:
        """Seconds since the oldest job of the topic still in the queue (leased or not) was published.

        Ids grow in publishing order and a retry keeps its row, so the lowest id is the oldest:
        a walk of the primary key that stops at the first row of the topic, not a scan of a backlog.
        """
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT queued_at FROM embedded_jobs WHERE topic = ? AND queued_at IS NOT NULL ORDER BY id LIMIT 1",
                (topic,),
            ).fetchone()
        )
        return 0.0 if row is None else max(0.0, self.clock() - float(row[0]))
