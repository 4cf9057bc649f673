"""A backup taken by an older chatd (an older schema) restores into the current one, migrated forward."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from chatd import migrations
from chatd.backends.registry import make_backends, opened
from chatd.backups import restoring, taking
from chatd.domain import NumberScope
from chatd.numbering import NumberRequest
from tests.backups.conftest import lose_the_store
from tests.conftest import Namespace
from tests.factories import message_job


async def test_an_older_backup_is_migrated_forward(
    namespace: Namespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = await namespace.settings()
    engine = "sqlite" if settings.database_url.startswith("sqlite://") else "mysql"
    every = [name for name, _ in migrations.migration_files(engine)]
    older = tmp_path / "older-sql"
    (older / engine).mkdir(parents=True)
    for name in every[:-1]:  # the schema of the chatd before the last migration
        shutil.copy(migrations.SQL_DIR / engine / f"{name}.sql", older / engine)
    backups = tmp_path / "backups"
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "SQL_DIR", older)
        backends = make_backends(settings, namespace.clock)
        async with opened(backends):
            store = backends.store
            assert await store.migrate() == every[:-1]
            app = await store.create_application("tok", "App", message_job(1, 1, 1).created_at)
            numbers = await store.take_numbers([NumberRequest(NumberScope(app.id, 1))] * 7, 0.0, 60)
            await store.save_messages([message_job(app.id, 1, taken.number) for taken in numbers])
        taken = await taking.take_backup(settings, backups)
    assert taken.manifest.schema == every[:-1]

    await lose_the_store(namespace)
    report = await restoring.restore(settings, backups, out=io.StringIO())
    assert report.migrated == every[-1:]
    backends = make_backends(settings, namespace.clock)
    async with opened(backends):
        store = backends.store
        assert await store.migrate() == []
        assert len(await store.list_messages_after(app.id, 1, 0, 100)) == 7
        [next_number] = await store.take_numbers([NumberRequest(NumberScope(app.id, 1))], 0.0, 60)
        assert next_number.number > 7
