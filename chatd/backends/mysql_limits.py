"""The admin's rate-limit overrides in MySQL/MariaDB (``sql/mysql/0008_*``), on the store's pool."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import aiomysql
import orjson

from chatd.backends.mysql_db import MysqlDatabase, to_db


class MysqlLimitOverrides:
    """``LimitOverrides`` through the store's ``MysqlDatabase`` (borrowed: the store opens and closes it)."""

    def __init__(self, database: MysqlDatabase):
        self.db = database

    async def get_overrides(self, application_id: int) -> dict[str, float]:
        row = await self.db.fetchone(
            "SELECT overrides FROM rate_limit_overrides WHERE application_id = %s", (application_id,)
        )
        return {} if row is None else dict(orjson.loads(row[0]))

    async def set_overrides(self, application_id: int, overrides: Mapping[str, float]) -> None:
        async def write(cursor: aiomysql.Cursor) -> None:
            if not overrides:
                await cursor.execute("DELETE FROM rate_limit_overrides WHERE application_id = %s", (application_id,))
                return
            await cursor.execute(
                "INSERT INTO rate_limit_overrides (application_id, overrides, updated_at) VALUES (%s, %s, %s)"
                " ON DUPLICATE KEY UPDATE overrides = VALUES(overrides), updated_at = VALUES(updated_at)",
                (application_id, orjson.dumps(dict(overrides)).decode(), to_db(datetime.now(UTC))),
            )

        await self.db.run(write, commit=True)
