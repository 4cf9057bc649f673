"""A backup taken under the fault suite's load: the cluster loses nothing, the backup is one moment.

``chatd backup`` runs as the timer runs it (a separate process) while two clients' load goes
through the api processes and the workers store, index and count. The cluster's verdict is the
fault suite's (every acked number stored once, searchable, counted; no 500, nothing late). The
backup is then put back into a new store and checked for a partial transaction: every row of
a transaction is in it or none is, which the count deltas show (a message and the delta that
counts it commit together, and a fold moves deltas into the counts in one transaction), and no
stored number is above its counter (a number is taken before its row is written).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from chatd.backends.mysql_db import MysqlTarget
from chatd.backups import mysql_engine, sqlite_engine, taking
from chatd.backups.manifest import read_verified
from tests.conftest import BACKEND_SETS, MYSQL_URL, Namespace, drop_mysql_database, mysql_connection
from tests.faults.test_faults import Cluster, survive
from tests.processes import settings_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

# Each one counts what a partial transaction would leave behind: all must be 0.
PARTIAL = {
    "chats whose count and pending deltas differ from their rows": (
        "SELECT COUNT(*) FROM chats c WHERE c.messages_count"
        " + COALESCE((SELECT SUM(d.delta) FROM count_deltas d WHERE d.chat_id = c.id), 0)"
        " <> (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id)"
    ),
    "applications whose count and pending deltas differ from their chats": (
        "SELECT COUNT(*) FROM applications a WHERE a.chats_count"
        " + COALESCE((SELECT SUM(d.delta) FROM count_deltas d WHERE d.application_id = a.id"
        " AND d.chat_id IS NULL), 0) <> (SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id)"
    ),
    "messages of no chat": (
        "SELECT COUNT(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM chats c WHERE c.id = m.chat_id)"
    ),
    "chats with a message above their counter": (
        "SELECT COUNT(*) FROM chats c JOIN number_counters n ON n.scope = {message_scope}"
        " WHERE (SELECT MAX(m.number) FROM messages m WHERE m.chat_id = c.id) > n.last_number"
    ),
    "chats with a message and no counter": (
        "SELECT COUNT(*) FROM chats c WHERE EXISTS (SELECT 1 FROM messages m WHERE m.chat_id = c.id)"
        " AND NOT EXISTS (SELECT 1 FROM number_counters n WHERE n.scope = {message_scope})"
    ),
}
SCOPE = {
    "sqlite": "'messages:' || c.application_id || ':' || c.number",
    "mysql": "CONCAT('messages:', c.application_id, ':', c.number)",
}


@pytest.mark.parametrize("backend_set", BACKEND_SETS)
async def test_backup_under_load(backend_set: str, tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    namespace = Namespace(backend_set, data)
    real = backend_set == "real"
    cluster = Cluster(namespace, tmp_path, roles=("api", "api", "worker", "worker") if real else ("api", "worker"))
    backups = tmp_path / "backups"

    async def back_up(cluster: Cluster) -> None:
        env = settings_env(await cluster.namespace.settings())
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatd", "backup", str(backups), env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()[-3000:]

    database = None if real else f"sqlite:///{data}/chatd.db"
    await survive(f"backup under load ({backend_set})", cluster, back_up, record_fault, database=database)

    [folder] = taking.backups_in(backups)
    manifest = read_verified(folder)
    if real:
        name = "chatd_t_put_back_" + uuid.uuid4().hex[:8]
        try:
            await mysql_engine.put_back(folder, MysqlTarget.parse(f"{MYSQL_URL}/{name}"), "test")
            async with mysql_connection(name) as conn, conn.cursor() as cursor:
                partial = {}
                for what, query in PARTIAL.items():
                    await cursor.execute(query.format(message_scope=SCOPE["mysql"]))
                    partial[what] = int((await cursor.fetchone())[0])
                await cursor.execute("SELECT COUNT(*) FROM messages")
                messages = int((await cursor.fetchone())[0])
        finally:
            await drop_mysql_database(name)
        # The manifest's counts are read once the dump is complete: at least what it holds.
        assert 0 < messages <= manifest.counts["messages"]
    else:
        store = tmp_path / "restored" / "chatd.db"
        sqlite_engine.put_back(folder, str(store), "test")
        with closing(sqlite3.connect(store)) as conn:
            partial = {
                what: conn.execute(query.format(message_scope=SCOPE["sqlite"])).fetchone()[0]
                for what, query in PARTIAL.items()
            }
            messages = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        assert 0 < messages == manifest.counts["messages"]
    assert partial == dict.fromkeys(PARTIAL, 0)
