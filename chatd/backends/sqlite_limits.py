"""The admin's rate-limit overrides in the embedded store's file (``sql/sqlite/0006_*``)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping

import orjson

from chatd.backends.sqlite_db import SqliteDatabase


class SqliteLimitOverrides:
    """``LimitOverrides`` on the store's SQLite database (opened and migrated with the store)."""

    def __init__(self, database: SqliteDatabase):
        self.db = database

    async def get_overrides(self, application_id: int) -> dict[str, float]:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT overrides FROM rate_limit_overrides WHERE application_id = ?", (application_id,)
            ).fetchone()
        )
        return {} if row is None else dict(orjson.loads(row[0]))

    async def set_overrides(self, application_id: int, overrides: Mapping[str, float]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            if not overrides:
                conn.execute("DELETE FROM rate_limit_overrides WHERE application_id = ?", (application_id,))
                return
            conn.execute(
                "INSERT INTO rate_limit_overrides (application_id, overrides, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (application_id) DO UPDATE SET overrides = excluded.overrides,"
                " updated_at = excluded.updated_at",
                (application_id, orjson.dumps(dict(overrides)).decode(), time.time()),
            )

        await self.db.transaction(write)
