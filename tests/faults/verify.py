"""After a fault: is every acked number stored once, searchable, and counted?"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import aiohttp

from tests.conftest import mysql_connection
from tests.faults.load import LoadResult


@dataclass
class Verdict:
    acked: int
    lost: int
    duplicated: int
    double_numbered: int
    unsearchable: int
    miscounted: int
    missing_chats: int

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.double_numbered
            or self.unsearchable
            or self.miscounted
            or self.missing_chats
        )


async def stored_rows(database: str, token: str) -> tuple[list[tuple[int, int, str]], dict[int, int], int, int]:
    """(chat, number, content) rows; messages_count per chat; chats_count and chats stored."""
    async with mysql_connection(database) as conn, conn.cursor() as cursor:
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
        len(load.acked_messages), lost, duplicated, load.double_numbered, unsearchable, miscounted, missing_chats
    )
