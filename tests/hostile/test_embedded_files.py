"""Embedded files belong to their store (issue 11, finding 12).

The search file used to default to ``./chatd-search.db`` whatever the database: pointed at
a new database in the same directory, chatd reused the old search file, whose documents
(same ids, higher revisions) hid the new messages from search. Now every embedded file is
derived from the store's location, and a search file records its store's identity.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chatd.app import create_app
from chatd.backends.registry import embedded_path, make_backends, opened, search_path
from chatd.settings import Settings
from tests.conftest import Api
from tests.factories import document


def test_embedded_files_are_derived_from_the_store() -> None:
    sqlite = Settings(database_url="sqlite:///data/chatd.db")
    assert search_path(sqlite) == "data/chatd.search.db"
    assert embedded_path(sqlite) == "data/chatd.db"
    mysql = Settings(database_url="mysql://u:p@db:3306/chat")
    assert search_path(mysql) == "./chat.search.db"
    assert embedded_path(mysql) == "./chat.embedded.db"
    assert search_path(Settings(database_url="sqlite:///:memory:")) == ":memory:"


def test_explicit_files_are_kept() -> None:
    settings = Settings(database_url="mysql://u:p@db/chat", search_path="/s.db", embedded_path="/e.db")
    assert (search_path(settings), embedded_path(settings)) == ("/s.db", "/e.db")


def test_the_environment_leaves_them_derived() -> None:
    settings = Settings.from_env({"CHATD_DATABASE_URL": "sqlite:///x/a.db", "CHATD_SEARCH_PATH": ""})
    assert search_path(settings) == "x/a.search.db"


async def _old_then_new(aiohttp_client, folder: Path, **files: str) -> dict:  # type: ignore[no-untyped-def]
    """Search the first message of a new database in ``folder``, after an old one's was edited."""
    found = {}
    for name, content in (("old", "old words"), ("new", "fresh words")):
        settings = Settings(database_url=f"sqlite:///{folder}/{name}.db", **files)  # type: ignore[arg-type]
        client = await aiohttp_client(create_app(settings, run_workers=False))
        api = Api(client, client.app)
        token = await api.create_application()
        chat = await api.create_chat(token)
        await api.create_message(token, chat, content)
        await api.settle()
        if name == "old":  # a higher revision than the new store's message 1
            response = await client.put(f"/applications/{token}/chats/{chat}/messages/1", json={"content": "edited"})
            assert response.status == 200, await response.text()
        await api.settle()
        found = await api.get_json(f"/applications/{token}/chats/{chat}/messages/search?query=fresh")
        await client.close()
    return found


async def test_a_new_database_beside_an_old_one_searches_its_own_messages(
    aiohttp_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # where the old default put the search file
    found = await _old_then_new(aiohttp_client, tmp_path)
    assert [m["message_number"] for m in found["messages"]] == [1]
    assert sorted(path.name for path in tmp_path.glob("*.search.db")) == ["new.search.db", "old.search.db"]


async def test_a_search_file_shared_by_two_databases_is_rebuilt(
    aiohttp_client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING, logger="chatd.backends.sqlite_search"):
        found = await _old_then_new(aiohttp_client, tmp_path, search_path=f"{tmp_path}/chatd-search.db")
    assert [m["message_number"] for m in found["messages"]] == [1]
    assert any("belongs to another store" in record.getMessage() for record in caplog.records)


async def test_the_same_store_keeps_its_index(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/chatd.db")
    for _ in range(2):
        async with opened(make_backends(settings)) as backends:
            await backends.search.index([document(1, 1, 1, "kept words")])
            assert (await backends.search.search(1, 1, "kept", 1, 10)).total == 1
    assert "another store" not in caplog.text


async def test_a_legacy_search_file_without_an_identity_is_rebuilt(tmp_path: Path) -> None:
    legacy = make_backends(Settings(database_url=f"sqlite:///{tmp_path}/a.db", search_path=f"{tmp_path}/s.db"))
    legacy.search._store_identity = None  # type: ignore[attr-defined]  # as written before identities
    async with opened(legacy):
        await legacy.search.index([document(1, 1, 1, "stale words", revision=3)])
    backends = make_backends(Settings(database_url=f"sqlite:///{tmp_path}/a.db", search_path=f"{tmp_path}/s.db"))
    async with opened(backends):
        assert (await backends.search.search(1, 1, "stale", 1, 10)).total == 0


@pytest.mark.real
async def test_beside_mysql_a_search_file_follows_its_database(tmp_path: Path) -> None:
    """Two MySQL databases given one search file: the second one's open empties it."""
    from tests.conftest import MYSQL_URL, create_mysql_database, drop_mysql_database, unique_name

    names = [unique_name(), unique_name()]
    for name in names:
        await create_mysql_database(name)
    try:
        for name, stale in zip(names, (True, False)):
            settings = Settings(database_url=f"{MYSQL_URL}/{name}", search_path=f"{tmp_path}/search.db")
            async with opened(make_backends(settings)) as backends:
                await backends.store.migrate()
                if stale:
                    await backends.search.index([document(1, 1, 1, "other database", revision=5)])
                assert (await backends.search.search(1, 1, "other", 1, 10)).total == (1 if stale else 0)
    finally:
        for name in names:
            await drop_mysql_database(name)
