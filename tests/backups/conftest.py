"""Helpers of the backup tests: a seeded application, a backup's data rewritten, a store's exact state.

``store_state`` is what "the restore changed nothing" compares: on SQLite the store file's inode,
the files beside it (a ``.replaced-`` or ``.restoring`` file would show) and every row of chatd's
tables; on MySQL the test's databases (a ``__replaced_`` or ``__restoring`` one would show), their
tables and a checksum of each.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chatd import keys
from chatd.ports import Store
from tests.conftest import Api, Namespace, drop_mysql_database, mysql_connection

TABLES = ("applications", "chats", "messages", "number_counters", "schema_migrations")
# Files SQLite makes and removes beside a store as connections come and go.
_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Seeded:
    token: str
    chat: int
    texts: dict[int, str]


async def seed(api: Api, label: str = "kept", messages: int = 3) -> Seeded:
    """An application with one chat of ``messages`` messages, stored and indexed."""
    token = await api.create_application(label)
    chat = await api.create_chat(token)
    texts = {}
    for i in range(messages):
        text = f"{label} message {i}"
        texts[await api.create_message(token, chat, text)] = text
    await api.settle()
    return Seeded(token, chat, texts)


async def answers(api: Api, seeded: Seeded) -> None:
    """The application answers with every message it was seeded with."""
    base = f"/applications/{seeded.token}/chats/{seeded.chat}/messages"
    for number, text in seeded.texts.items():
        assert (await api.get_json(f"{base}/{number}"))["content"] == text
    listed = await api.get_json(f"{base}?per_page=100")
    assert {item["number"] for item in listed["data"]} == set(seeded.texts)


async def all_answer(make_api, *seeded: Seeded) -> None:  # type: ignore[no-untyped-def]
    """Each seeded application answers on an app opened for the check, closed after it.

    Closed: an app left open on a SQLite store that is then deleted or replaced would, when the
    test ends, close its connections onto the files of the store that took its place.
    """
    api: Api = await make_api()
    try:
        for one in seeded:
            await answers(api, one)
    finally:
        await api.client.close()


def store_of(api: Api) -> Store:
    return api.app[keys.BACKENDS].store


def data_file(folder: Path) -> Path:
    """The backup's one data file (store.db.gz or store.sql.gz), as its manifest names it."""
    [entry] = json.loads((folder / "manifest.json").read_bytes())["files"]
    return folder / entry["name"]


def copy_backup(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def flip_byte(path: Path) -> None:
    """One byte in the middle of ``path`` changed: same size, another checksum."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_manifest(folder: Path, **changes: Any) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_bytes())
    manifest.update(changes)
    path.write_bytes(json.dumps(manifest).encode())


def replace_data(folder: Path, data: bytes) -> None:
    """The data file replaced by ``data``, its manifest's size and SHA-256 made to match (a broken copy tool)."""
    path = data_file(folder)
    path.write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_bytes())
    [entry] = manifest["files"]
    entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / "manifest.json").write_bytes(json.dumps(manifest).encode())


def store_path(namespace: Namespace) -> Path:
    """The embedded set's store file (``tests.conftest.embedded_settings``)."""
    return namespace.folder / "chatd.db"


async def mysql_databases(prefix: str) -> set[str]:
    async with mysql_connection() as conn, conn.cursor() as cursor:
        await cursor.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
            (prefix.replace("_", "\\_") + "%",),
        )
        return {row[0] for row in await cursor.fetchall()}


async def store_state(namespace: Namespace) -> dict[str, Any]:
    """Everything a refused restore must leave as it was (see the module's docstring)."""
    if namespace.backend_set == "real":
        state: dict[str, Any] = {"databases": sorted(await mysql_databases(namespace.name))}
        async with mysql_connection() as conn, conn.cursor() as cursor:
            for database in state["databases"]:
                await cursor.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
                    (database,),
                )
                tables = [row[0] for row in await cursor.fetchall()]
                if not tables:
                    state[database] = []
                    continue
                await cursor.execute("CHECKSUM TABLE " + ", ".join(f"`{database}`.`{t}`" for t in tables))
                state[database] = sorted(await cursor.fetchall())
        return state
    path = store_path(namespace)
    files = sorted(p.name for p in namespace.folder.iterdir() if p.is_file() and not p.name.endswith(_SIDE_SUFFIXES))
    state = {"files": files, "inode": path.stat().st_ino if path.exists() else None}
    if path.exists():
        with closing(sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)) as conn:
            for table in TABLES:
                state[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    return state


async def lose_the_store(namespace: Namespace, *, with_search: bool = True) -> None:
    """The store is gone: its MySQL database, or its SQLite file (and the search file beside it)."""
    if namespace.backend_set == "real":
        await drop_mysql_database(namespace.name)
        return
    for path in namespace.folder.glob("chatd.db*"):
        path.unlink()
    if with_search:
        for path in namespace.folder.glob("search.db*"):
            path.unlink()


@pytest.fixture
async def drop_afterwards() -> AsyncIterator[list[str]]:
    """MySQL databases a test made (a replaced store kept aside), dropped when it ends."""
    names: list[str] = []
    try:
        yield names
    finally:
        for name in names:
            await drop_mysql_database(name)


def mode_of(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
