"""The MySQL store against a real MariaDB/MySQL: what only a real server shows.

Each test gets a fresh database ``chatd_t_<random>`` on the shared server and drops it
afterwards. The restart test runs its own throw-away ``mariadbd`` on a free port, so it
never disturbs anyone else using the shared server.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pymysql.constants import CLIENT

from chatd.backends.mysql_store import MysqlStore
from chatd.domain import MessageJob, NumberScope
from chatd.errors import BackendUnavailable
from chatd.jobs import format_time
from chatd.migrations import migration_files
from chatd.numbering import NumberRequest
from tests.conftest import MYSQL_URL, mysql_connection
from tests.factories import WHEN, chat_job, eventually, fails_without_hanging, message_job
from tests.servers import PrivateMariadb, free_port, running

pytestmark = pytest.mark.real


async def server_sql(sql: str, database: str | None = None, url: str = MYSQL_URL) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection (setup and checks outside the store)."""
    async with mysql_connection(database, url) as conn, conn.cursor() as cursor:
        await cursor.execute(sql)
        return list(await cursor.fetchall())


@pytest.fixture
async def database() -> AsyncIterator[str]:
    name = "chatd_t_" + uuid.uuid4().hex[:12]
    await server_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        yield name
    finally:
        if await server_sql(f"SHOW DATABASES LIKE '{name}'"):  # a test may have dropped it (destroy)
            await server_sql(f"DROP DATABASE `{name}`")


@pytest.fixture
async def store(database: str) -> AsyncIterator[MysqlStore]:
    store = MysqlStore(f"{MYSQL_URL}/{database}?pool_size=8")
    await store.open()
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def table_sql(store: MysqlStore, sql: str) -> list[tuple[Any, ...]]:
    return await server_sql(sql, store.target.database)


async def assert_counts_match_rows(store: MysqlStore) -> None:
    """After a full fold, every stored count equals the rows it counts, and no delta is left."""
    while (await store.reconcile_counts(limit=50)).deltas:
        pass
    assert await table_sql(store, "SELECT COUNT(*) FROM count_deltas") == [(0,)]
    wrong_chats = await table_sql(
        store,
        "SELECT c.id, c.messages_count, COUNT(m.id) FROM chats c"
        " LEFT JOIN messages m ON m.chat_id = c.id GROUP BY c.id, c.messages_count"
        " HAVING c.messages_count <> COUNT(m.id)",
    )
    wrong_apps = await table_sql(
        store,
        "SELECT a.id, a.chats_count, COUNT(c.id) FROM applications a"
        " LEFT JOIN chats c ON c.application_id = a.id GROUP BY a.id, a.chats_count"
        " HAVING a.chats_count <> COUNT(c.id)",
    )
    assert (wrong_chats, wrong_apps) == ([], [])


# Exact counts


async def test_affected_rows_count_only_rows_inserted(store: MysqlStore) -> None:
    # With CLIENT_FOUND_ROWS a row already there would count as 1 and the deltas would overcount.
    async def client_flag(cursor: Any) -> int:
        return int(cursor.connection.client_flag)

    assert not await store.db.run(client_flag, commit=False) & CLIENT.FOUND_ROWS
    app = await store.create_application("tok", "App", WHEN)
    await store.save_chats([chat_job(app.id, n) for n in (1, 2, 3)])
    await store.save_chats([chat_job(app.id, n) for n in (2, 3, 4, 5, 5)])
    assert await table_sql(store, "SELECT application_id, chat_id, delta FROM count_deltas ORDER BY id") == [
        (app.id, None, 3),
        (app.id, None, 2),
    ]
    await store.save_messages([message_job(app.id, 1, n) for n in (1, 2)])
    await store.save_messages([message_job(app.id, 1, n) for n in (1, 2, 3)] + [message_job(app.id, 6, 1)])
    chat_1 = (await table_sql(store, f"SELECT id FROM chats WHERE application_id = {app.id} AND number = 1"))[0][0]
    chat_6 = (await table_sql(store, f"SELECT id FROM chats WHERE application_id = {app.id} AND number = 6"))[0][0]
    assert await table_sql(
        store, "SELECT application_id, chat_id, delta FROM count_deltas WHERE id > 2 ORDER BY id"
    ) == [(app.id, chat_1, 2), (app.id, None, 1), (app.id, chat_1, 1), (app.id, chat_6, 1)]


async def test_duplicate_jobs_in_one_batch_store_once_and_return_the_stored_version(store: MysqlStore) -> None:
    app = await store.create_application("tok", "App", WHEN)
    batch = [message_job(app.id, 1, 1, "first"), message_job(app.id, 1, 1, "second"), message_job(app.id, 1, 2)]
    documents = await store.save_messages(batch)
    assert [(d.message_number, d.content) for d in documents] == [(1, "first"), (1, "first"), (2, "hello")]
    assert await table_sql(store, "SELECT COUNT(*) FROM messages") == [(2,)]
    await assert_counts_match_rows(store)


async def test_concurrent_overlapping_batches_store_each_row_once_with_exact_deltas(store: MysqlStore) -> None:
    apps = [await store.create_application(f"tok-{i}", f"App {i}", WHEN) for i in range(3)]
    keys = [(app.id, chat, number) for app in apps for chat in range(1, 6) for number in range(1, 41)]
    randomness = random.Random(7)

    async def worker() -> None:
        for _ in range(6):
            batch = [message_job(*key) for key in randomness.sample(keys, 120)]
            documents = await store.save_messages(batch)
            # Every job comes back, also those another worker stored a moment before.
            assert [(d.application_id, d.chat_number, d.message_number) for d in documents] == [
                (job.application_id, job.chat_number, job.message_number) for job in batch
            ]

    async def reconciler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await store.reconcile_counts(limit=25)
            await asyncio.sleep(0)

    stop = asyncio.Event()
    folding = asyncio.create_task(reconciler(stop))
    await asyncio.gather(*(worker() for _ in range(6)))
    stop.set()
    await folding
    stored = await table_sql(store, "SELECT COUNT(*), COUNT(DISTINCT chat_id, number) FROM messages")
    assert stored[0][0] == stored[0][1]
    await assert_counts_match_rows(store)
    pages = [await store.list_chats(app.id, 1, 10) for app in apps]
    assert sum(chat.messages_count for page in pages for chat in page.items) == stored[0][0]


async def test_concurrent_reconcilers_split_the_deltas_between_them(store: MysqlStore) -> None:
    app = await store.create_application("tok", "App", WHEN)
    for chat in range(1, 41):
        await store.save_messages([message_job(app.id, chat, n) for n in range(1, chat % 4 + 2)])
    pending = (await table_sql(store, "SELECT COUNT(*) FROM count_deltas"))[0][0]
    assert pending == 80  # one per chat created, one per chat's messages
    results = await asyncio.gather(*(store.reconcile_counts(limit=9) for _ in range(6)))
    while (folded := await store.reconcile_counts(limit=9)).deltas:
        results.append(folded)
    assert sum(result.deltas for result in results) == pending  # every delta applied exactly once
    await assert_counts_match_rows(store)
    assert (await store.get_application("tok")).chats_count == 40  # type: ignore[union-attr]


async def test_large_batches_split_into_several_statements_and_round_trips(store: MysqlStore) -> None:
    app = await store.create_application("tok", "App", WHEN)
    content = "🚀" * 10_000  # 40 KB of utf8mb4: 250 of them exceed one round trip's budget
    batch = [message_job(app.id, 1 + n % 2, n, content) for n in range(1, 251)]
    documents = await store.save_messages(batch)
    assert len(documents) == 250 and all(d.content == content for d in documents)
    await store.reconcile_counts()
    assert [chat.messages_count for chat in (await store.list_chats(app.id, 1, 10)).items] == [125, 125]
    assert (await store.get_message(app.id, 1, 250)).content == content  # type: ignore[union-attr]


async def test_concurrent_edits_each_get_their_own_revision(store: MysqlStore) -> None:
    app = await store.create_application("tok", "App", WHEN)
    await store.save_messages([message_job(app.id, 1, 1)])
    edits = await asyncio.gather(*(store.update_message(app.id, 1, 1, f"edit {i}", WHEN) for i in range(10)))
    assert sorted(edit.revision for edit in edits if edit) == list(range(2, 12))
    last = max((edit for edit in edits if edit), key=lambda edit: edit.revision)
    assert (await store.get_message(app.id, 1, 1)).content == last.content  # type: ignore[union-attr]


async def test_concurrent_groups_on_one_counter_never_share_a_number(store: MysqlStore) -> None:
    """Groups from many connections at once (api processes) on one hot counter: 1..n, each once."""
    scope = NumberScope(1, 1)
    groups = [[NumberRequest(scope)] * size for size in range(1, 21)]
    results = await asyncio.gather(*(store.take_numbers(group, 0.0, 60) for group in groups))
    numbers = sorted(answer.number for taken in results for answer in taken)
    assert numbers == list(range(1, sum(range(1, 21)) + 1))
    assert await store.last_number(scope) == numbers[-1]


# Data round trips


async def test_utf8mb4_text_and_binary_tokens(store: MysqlStore) -> None:
    name = "Ünïcode 🚀🎉 " + "𝔘" * 200  # 4-byte characters up to the 255-character column
    app = await store.create_application("Tok-A", name[:255], WHEN)
    assert (await store.get_application("Tok-A")).name == name[:255]  # type: ignore[union-attr]
    # Tokens compare as bytes: another case is another (unknown) token, and may be created.
    assert await store.get_application("tok-a") is None
    await store.create_application("tok-a", "Other", WHEN)
    text = "🎉 مرحبا 你好 é\u0301 \x00 nul and 'quotes' \\ backslash %s"
    await store.save_messages([message_job(app.id, 1, 1, text), message_job(app.id, 1, 2, "🚀" * 10_000)])
    assert (await store.get_message(app.id, 1, 1)).content == text  # type: ignore[union-attr]
    assert (await store.get_message(app.id, 1, 2)).content == "🚀" * 10_000  # type: ignore[union-attr]


async def test_times_come_back_as_utc_milliseconds(store: MysqlStore) -> None:
    # Cut, not rounded (MySQL would round .999999 up to the next second), whatever the zone given.
    moment = datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-5)))
    app = await store.create_application("tok", "App", moment)
    stored = await store.get_application("tok")
    assert stored is not None and stored == app
    assert stored.created_at.tzinfo == UTC
    assert format_time(stored.created_at) == format_time(moment) == "2026-03-02T04:59:59.999Z"
    await store.save_messages([MessageJob(app.id, 1, 1, "x", moment)])
    message = await store.get_message(app.id, 1, 1)
    assert message is not None and format_time(message.created_at) == "2026-03-02T04:59:59.999Z"


# Schema and connections


async def test_concurrent_migrations_apply_each_file_once(database: str) -> None:
    stores = [MysqlStore(f"{MYSQL_URL}/{database}") for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        applied = await asyncio.gather(*(store.migrate() for store in stores))
        assert sorted(applied) == [[], [], [name for name, _ in migration_files("mysql")]]
        assert await stores[0].migrate() == []
        assert sorted(await server_sql("SELECT name FROM schema_migrations", database)) == [
            (name,) for name, _ in migration_files("mysql")
        ]
        collations = await server_sql(
            f"SELECT DISTINCT table_collation, engine FROM information_schema.tables WHERE table_schema = '{database}'"
        )
        assert collations == [("utf8mb4_unicode_ci", "InnoDB")]
    finally:
        for store in stores:
            await store.close()


async def test_unreachable_server_is_backend_unavailable() -> None:
    store = MysqlStore(f"mysql://chatd:chatd@127.0.0.1:{free_port()}/chatd")  # nothing listens there
    await fails_without_hanging(store.open)


async def test_pool_replaces_connections_the_server_killed(store: MysqlStore) -> None:
    app = await store.create_application("tok", "App", WHEN)
    await asyncio.gather(*(store.ping() for _ in range(6)))  # several idle connections in the pool
    ours = await server_sql(
        f"SELECT id FROM information_schema.processlist WHERE db = '{store.target.database}' AND id <> CONNECTION_ID()"
    )
    assert len(ours) >= 2
    for (connection_id,) in ours:
        await server_sql(f"KILL CONNECTION {connection_id}")
    for _ in range(len(ours) + 1):  # every dead one would be handed out in turn
        assert await store.get_application("tok") == app
    await store.save_messages([message_job(app.id, 1, 1)])
    await store.destroy()
    assert await server_sql(f"SHOW DATABASES LIKE '{store.target.database}'") == []


@pytest.fixture
async def private_mariadb() -> AsyncIterator[PrivateMariadb]:
    with tempfile.TemporaryDirectory(prefix="chatd-mariadb-") as folder:
        async with running(PrivateMariadb(Path(folder))) as server:
            yield server


async def answers(url: str) -> bool:
    try:
        await server_sql("SELECT 1", url=url)
    except Exception:
        return False
    return True


async def test_store_recovers_after_a_server_restart(private_mariadb: PrivateMariadb) -> None:
    await eventually(lambda: answers(private_mariadb.url), timeout=60)
    await server_sql("CREATE DATABASE chatd", url=private_mariadb.url)
    store = MysqlStore(f"{private_mariadb.url}/chatd?pool_size=4&timeout=5")
    await store.open()
    try:
        await store.migrate()
        app = await store.create_application("tok", "App", WHEN)
        await asyncio.gather(*(store.ping() for _ in range(4)))
        await private_mariadb.stop()
        with pytest.raises(BackendUnavailable):
            await store.ping()
        with pytest.raises(BackendUnavailable):
            await store.save_messages([message_job(app.id, 1, 1)])
        await private_mariadb.start()
        await eventually(lambda: answers(private_mariadb.url), timeout=60)
        # No reconnect by hand: the very next calls get working connections.
        assert await store.get_application("tok") == app
        assert [d.message_number for d in await store.save_messages([message_job(app.id, 1, 1)])] == [1]
        await store.ping()
    finally:
        await store.close()


async def test_numbering_without_returning_as_on_mysql(store: MysqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """MySQL has no INSERT ... RETURNING: the counters are read back in the same transaction."""
    from chatd.backends import mysql_numbers

    monkeypatch.setattr(mysql_numbers, "returns_rows", lambda cursor: False)
    scope = NumberScope(1, 1)
    groups = [[NumberRequest(scope), NumberRequest(NumberScope(1, 2))] for _ in range(10)]
    results = await asyncio.gather(*(store.take_numbers(group, 0.0, 60) for group in groups))
    assert sorted(taken[0].number for taken in results) == list(range(1, 11))
    assert sorted(taken[1].number for taken in results) == list(range(1, 11))
