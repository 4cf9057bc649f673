"""After a fault: is every acked number stored once, searchable, and counted?

The stored rows are read straight from the store, past chatd: from a database of the shared
test MariaDB (by name), from any MySQL/MariaDB by URL (``mysql://user@host:port/db``, a private
server), or from an embedded store's SQLite file (``sqlite:///path``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from tests.conftest import MYSQL_URL, mysql_connection
from tests.faults.load import LoadResult

Rows = tuple[list[tuple[int, int, str]], dict[int, int], int, int]


@dataclass
class Verdict:
    acked: int
    lost: int
    duplicated: int
    double_numbered: int
    unsearchable: int
    miscounted: int
    missing_chats: int
    # From the load, not the store: answers that were a 5xx other than 503, and attempts not
    # answered within the request deadline (tests.faults.load).
    answers_500: int = 0
    late: int = 0

    @classmethod
    def none(cls) -> Verdict:
        """What a fault that never got as far as a verdict records."""
        return cls(0, 0, 0, 0, 0, 0, 0)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.double_numbered
            or self.unsearchable
            or self.miscounted
            or self.missing_chats
            or self.answers_500
            or self.late
        )

    def line(self) -> str:
        """The verdict's figures, as the summary prints them."""
        return (
            f"messages acked {self.acked}, lost {self.lost}, duplicated {self.duplicated}, "
            f"double-numbered {self.double_numbered}, unsearchable {self.unsearchable}, "
            f"miscounted {self.miscounted}, missing chats {self.missing_chats}; "
            f"answers 500 {self.answers_500}, late {self.late}"
        )


async def stored_rows(database: str, token: str) -> Rows:
    """(chat, number, content) rows; messages_count per chat; chats_count and chats stored.

    ``database``: a database name on the shared test MariaDB, a ``mysql://`` URL with the database
    as its path, or a ``sqlite:///`` URL of an embedded store.
    """
    if database.startswith("sqlite://"):
        return await asyncio.to_thread(_sqlite_rows, database.removeprefix("sqlite://"), token)
    url = MYSQL_URL
    if "://" in database:
        parts = urlsplit(database)
        url, database = parts._replace(path="").geturl(), parts.path.lstrip("/")
    async with mysql_connection(database, url) as conn, conn.cursor() as cursor:
        await cursor.execute("SELECT id, chats_count FROM applications WHERE token = %s", (token,))
        app_id, chats_count = await cursor.fetchone()
        await cursor.execute(
            "SELECT c.number, m.number, m.content FROM messages m JOIN chats c"
            " ON c.id = m.chat_id WHERE c.application_id = %s",
            (app_id,),
        )
        rows = [(int(a), int(b), str(c)) for a, b, c in await cursor.fetchall()]
        await cursor.execute("SELECT number, messages_count FROM chats WHERE application_id = %s", (app_id,))
        counts = {int(number): int(count) for number, count in await cursor.fetchall()}
        return rows, counts, int(chats_count), len(counts)


def _sqlite_rows(path: str, token: str) -> Rows:
    """The same read from an embedded store's file (it runs in WAL mode: readers never block its writer)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        app_id, chats_count = conn.execute(
            "SELECT id, chats_count FROM applications WHERE token = ?", (token,)
        ).fetchone()
        rows = [
            (int(a), int(b), str(c))
            for a, b, c in conn.execute(
                "SELECT c.number, m.number, m.content FROM messages m JOIN chats c"
                " ON c.id = m.chat_id WHERE c.application_id = ?",
                (app_id,),
            )
        ]
        counts = {
            int(number): int(count)
            for number, count in conn.execute(
                "SELECT number, messages_count FROM chats WHERE application_id = ?", (app_id,)
            )
        }
        return rows, counts, int(chats_count), len(counts)
    finally:
        conn.close()


async def search_totals(api_url: str, token: str, chats: list[int]) -> dict[int, int]:
    totals = {}
    async with aiohttp.ClientSession() as session:
        for chat in chats:
            url = f"{api_url}/applications/{token}/chats/{chat}/messages/search"
            async with session.get(url, params={"query": "fault load", "per_page": "1"}) as response:
                body = await response.json()
                totals[chat] = int(body.get("total", -1)) if response.status == 200 else -1
    return totals


async def verify(database: str, api_url: str, token: str, load: LoadResult) -> Verdict:
    rows, counts, chats_count, chats_stored = await stored_rows(database, token)
    stored = {(chat, number): content for chat, number, content in rows}
    lost = sum(1 for key, content in load.acked_messages.items() if stored.get(key) != content)
    duplicated = sum(n - 1 for n in Counter(content for _, _, content in rows).values() if n > 1)
    per_chat = Counter(chat for chat, _, _ in rows)
    searchable = await search_totals(api_url, token, sorted(per_chat))
    unsearchable = sum(abs(per_chat[chat] - searchable[chat]) for chat in per_chat)
    miscounted = sum(1 for chat, n in per_chat.items() if counts.get(chat) != n) + (chats_count != chats_stored)
    missing_chats = sum(1 for chat in load.acked_chats if chat not in counts)
    return Verdict(
        len(load.acked_messages),
        lost,
        duplicated,
        load.double_numbered,
        unsearchable,
        miscounted,
        missing_chats,
        load.answers_500,
        load.late,
    )
