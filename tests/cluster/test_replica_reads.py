"""The GET routes read chats and messages from the MariaDB replica while it keeps up.

A chat row written on the replica alone (outside replication) tells which server answered: the
api process finds it while the replica replicates, stops finding it once replication stops
(the primary answers), and finds it again once replication resumes.
Writes, tokens and "was this number handed out" stay on the primary throughout.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.cluster.test_node_loss import REPLICA_URL
from tests.conftest import Namespace, mysql_connection
from tests.faults.test_faults import services
from tests.processes import ChatdProcess, application_and_chat

pytestmark = [pytest.mark.cluster, pytest.mark.real, pytest.mark.timeout(300)]

ONLY_ON_THE_REPLICA = 999


async def chat_status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


async def until_status(session: aiohttp.ClientSession, url: str, status: int, timeout: float = 15.0) -> None:
    """Await GET ``url`` answering ``status``; fail after ``timeout``."""
    began = time.monotonic()
    while (seen := await chat_status(session, url)) != status:
        assert time.monotonic() - began < timeout, f"GET {url} still answers {seen}, not {status}"
        await asyncio.sleep(0.1)


async def test_reads_go_to_the_replica_while_it_replicates(tmp_path: Path) -> None:
    namespace = Namespace("real", tmp_path)
    paused = False
    try:
        settings = await namespace.serving_settings(
            database_replica_url=f"{REPLICA_URL}/{namespace.name}", replica_max_lag_seconds=5.0
        )
        async with ChatdProcess(settings, "all", tmp_path) as api, aiohttp.ClientSession() as session:
            token, chat = await application_and_chat(session, "replica reads", api.url)
            base = f"{api.url}/applications/{token}/chats"
            await until_status(session, f"{base}/{chat}", 200)
            async with mysql_connection(namespace.name, REPLICA_URL) as conn, conn.cursor() as cursor:
                await cursor.execute("SET SESSION sql_log_bin = 0")  # this row is the replica's alone
                await cursor.execute(
                    "INSERT INTO chats (id, application_id, number, messages_count, created_at)"
                    " SELECT 1000000000, id, %s, 0, NOW(3) FROM applications WHERE token = %s",
                    (ONLY_ON_THE_REPLICA, token),
                )
            marked = f"{base}/{ONLY_ON_THE_REPLICA}"
            await until_status(session, marked, 200)

            await services("cluster", "pause-replication")
            paused = True
            # Within the deadline: the next lag check (once a second) finds replication stopped.
            await until_status(session, marked, 404)
            # The primary goes on taking writes and answering them.
            async with session.post(f"{base}/{chat}/messages", json={"content": "while paused"}) as response:
                assert response.status == 201

            await services("cluster", "resume-replication")
            paused = False
            await until_status(session, marked, 200)
    finally:
        if paused:
            await services("cluster", "resume-replication")
        async with mysql_connection(namespace.name, REPLICA_URL) as conn, conn.cursor() as cursor:
            await cursor.execute("SET SESSION sql_log_bin = 0")
            await cursor.execute("DELETE FROM chats WHERE id = 1000000000")
        await namespace.cleanup()
