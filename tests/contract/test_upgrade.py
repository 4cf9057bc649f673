"""Upgrading a store of the old design (numbers from Redis, reservations in the store) to numbers in the store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chatd import migrations
from chatd.backends.registry import make_backends, opened
from chatd.domain import NumberScope
from chatd.numbering import NumberRequest
from tests.conftest import Namespace
from tests.factories import message_job

# The last migration of the old design on each engine.
OLD_SCHEMA = {"sqlite": "0001_initial", "mysql": "0002_token_bytes"}


async def test_counters_start_above_every_reservation_and_stored_number(
    namespace: Namespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = await namespace.settings()
    engine = "sqlite" if settings.database_url.startswith("sqlite://") else "mysql"
    old = tmp_path / "old-sql"
    (old / engine).mkdir(parents=True)
    for name, _ in migrations.migration_files(engine):
        if name <= OLD_SCHEMA[engine]:
            shutil.copy(migrations.SQL_DIR / engine / f"{name}.sql", old / engine)
    backends = make_backends(settings, namespace.clock)
    async with opened(backends):
        store = backends.store
        with monkeypatch.context() as patch:
            patch.setattr(migrations, "SQL_DIR", old)
            await store.migrate()
        app = await store.create_application("tok", "App", message_job(1, 1, 1).created_at)
        await store.save_messages([message_job(app.id, 1, n) for n in range(1, 8)])
        await store.save_messages([message_job(app.id, 2, n) for n in range(1, 10)])
        await _reserve(store, f"messages:{app.id}:1", 150)  # the old design's block ahead of Redis
        await _reserve(store, f"chats:{app.id}", 40)
        applied = await store.migrate()
        assert applied and all(name > OLD_SCHEMA[engine] for name in applied)
        assert await store.last_number(NumberScope(app.id, 1)) == 150
        assert await store.last_number(NumberScope(app.id, 2)) == 9  # stored, never reserved
        assert await store.last_number(NumberScope(app.id)) == 40
        taken = await store.take_numbers(
            [NumberRequest(NumberScope(app.id, 1)), NumberRequest(NumberScope(app.id, 2))], 0.0, 60
        )
        assert [answer.number for answer in taken] == [151, 10]


async def _reserve(store: object, scope: str, upto: int) -> None:
    """Write a reservation row as the old design did (its table is gone after the upgrade)."""
    db = store.db  # type: ignore[attr-defined]
    if hasattr(db, "transaction"):
        await db.transaction(
            lambda conn: conn.execute(
                "INSERT INTO number_reservations (scope, reserved_upto) VALUES (?, ?)", (scope, upto)
            )
        )
        return

    async def insert(cursor):  # type: ignore[no-untyped-def]
        await cursor.execute("INSERT INTO number_reservations (scope, reserved_upto) VALUES (%s, %s)", (scope, upto))

    await db.run(insert, commit=True)
