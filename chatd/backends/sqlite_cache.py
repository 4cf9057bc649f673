"""Locks and the cache in SQLite: the embedded stand-ins for Redis.

Kept in the embedded database file so that every process using it shares them: an api
process and a worker process see the same locks and cached records, as they would through
Redis. (Numbers and idempotency keys are the store's: ``Store.take_numbers``.)
"""

from __future__ import annotations

import sqlite3

from chatd.backends.sqlite_db import SqliteBacked

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS embedded_locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS embedded_cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL)",
)


class SqliteLock(SqliteBacked):
    """Leases with an owner and an expiry, visible to every process using the file."""

    name = "sqlite-lock"
    schema = _SCHEMA

    async def acquire(self, name: str, owner: str, ttl_seconds: float) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            now = self.clock()
            cursor = conn.execute(
                "INSERT INTO embedded_locks (name, owner, expires) VALUES (?, ?, ?) ON CONFLICT (name)"
                " DO UPDATE SET owner = excluded.owner, expires = excluded.expires"
                " WHERE embedded_locks.expires < ? OR embedded_locks.owner = excluded.owner",
                (name, owner, now + ttl_seconds, now),
            )
            return cursor.rowcount == 1

        return await self.db.transaction(take)

    async def release(self, name: str, owner: str) -> None:
        await self.db.transaction(
            lambda conn: conn.execute("DELETE FROM embedded_locks WHERE name = ? AND owner = ?", (name, owner))
        )


class SqliteCache(SqliteBacked):
    """Entries with an expiry; expired ones read as absent and are swept on write."""

    name = "sqlite-cache"
    schema = _SCHEMA
    _writes = 0  # expired entries are swept every 1000 writes

    async def get(self, key: str) -> bytes | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT value FROM embedded_cache WHERE key = ? AND expires > ?", (key, self.clock())
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        await self.db.transaction(lambda conn: self._put(conn, key, value, ttl_seconds))

    def _put(self, conn: sqlite3.Connection, key: str, value: bytes, ttl: float) -> None:
        now = self.clock()
        self._writes += 1
        if self._writes % 1000 == 0:
            conn.execute("DELETE FROM embedded_cache WHERE expires <= ?", (now,))
        conn.execute(
            "INSERT INTO embedded_cache (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE"
            " SET value = excluded.value, expires = excluded.expires",
            (key, value, now + ttl),
        )

    async def delete(self, key: str) -> None:
        await self.db.transaction(lambda conn: conn.execute("DELETE FROM embedded_cache WHERE key = ?", (key,)))

    async def clear(self) -> None:
        await self.db.transaction(lambda conn: conn.execute("DELETE FROM embedded_cache"))
