"""What a restore refuses, on both backend sets, and that a refused restore changes nothing.

A backup that is corrupt, truncated, incomplete, of a later format or of the other engine is
refused before anything changes, even with ``force``; so is a store that holds applications,
unless ``force``, which keeps the old store aside. A data file whose checksum was made to match
(an operator's broken copy tool) but that does not load is refused after it was staged: the
staging is removed and the store is left as it was.
"""

from __future__ import annotations

import gzip
import io
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from chatd.backends.mysql_store import MysqlStore
from chatd.backends.sqlite_store import SqliteStore
from chatd.backups import restoring, taking
from chatd.backups.manifest import FORMAT, BackupRefused, read_verified
from chatd.settings import Settings
from tests.backups.conftest import (
    Seeded,
    all_answer,
    answers,
    copy_backup,
    data_file,
    edit_manifest,
    flip_byte,
    lose_the_store,
    mysql_databases,
    replace_data,
    seed,
    store_path,
    store_state,
)
from tests.conftest import MYSQL_URL, REAL, Api, Namespace, embedded_settings

STAMP = re.compile(r"\d{8}T\d{6}Z")


async def _restore(settings: Settings, path: Path, *, force: bool = False) -> restoring.RestoreReport:
    return await restoring.restore(settings, path, force=force, out=io.StringIO())


async def _seeded_backup(namespace: Namespace, make_api, tmp_path: Path) -> tuple[Settings, Api, Seeded, Path]:  # type: ignore[no-untyped-def]
    settings = await namespace.settings()
    api: Api = await make_api()
    kept = await seed(api)
    taken = await taking.take_backup(settings, tmp_path / "backups")
    return settings, api, kept, taken.folder


async def _refused_and_unchanged(namespace: Namespace, settings: Settings, path: Path, match: str) -> None:
    """Refused even with force, naming ``match``, and the store exactly as it was."""
    before = await store_state(namespace)
    with pytest.raises(BackupRefused, match=match):
        await _restore(settings, path, force=True)
    assert await store_state(namespace) == before, path


async def test_a_corrupt_backup_is_refused_and_changes_nothing(namespace: Namespace, make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, api, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    corrupt = copy_backup(folder, tmp_path / "corrupt")
    flip_byte(data_file(corrupt))

    await _refused_and_unchanged(namespace, settings, corrupt, "checksum")
    await all_answer(make_api, kept)

    # Into an empty store: refused, the store still empty; the intact backup then restores.
    await api.client.close()
    await lose_the_store(namespace)
    empty = await store_state(namespace)
    with pytest.raises(BackupRefused, match="does not match its checksum"):
        await _restore(settings, corrupt)
    assert await store_state(namespace) == empty
    report = await _restore(settings, folder)
    assert report.replaced is None
    await all_answer(make_api, kept)


async def test_a_truncated_data_file_is_refused(namespace: Namespace, make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, _, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    truncated = copy_backup(folder, tmp_path / "truncated")
    data = data_file(truncated)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    await _refused_and_unchanged(namespace, settings, truncated, "truncated")
    await all_answer(make_api, kept)


async def test_what_is_not_a_whole_backup_is_refused(namespace: Namespace, make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, _, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    cases: list[tuple[Path, str]] = []

    no_manifest = copy_backup(folder, tmp_path / "no-manifest")
    (no_manifest / "manifest.json").unlink()
    cases.append((no_manifest, "no chatd backup"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "no chatd backup"))
    cases.append((tmp_path / "nothing-here", "no chatd backup"))
    # A backup that crashed before its rename (manifest written, final name not yet): not a backup.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    copy_backup(folder, crashed / f".{folder.name}.partial")
    cases.append((crashed, "no chatd backup"))

    newer = copy_backup(folder, tmp_path / "newer")
    edit_manifest(newer, format=FORMAT + 1)
    cases.append((newer, "newer"))
    garbled = copy_backup(folder, tmp_path / "garbled")
    (garbled / "manifest.json").write_bytes(b'{"format": 1, "engine": ')
    cases.append((garbled, "not a chatd backup manifest"))
    incomplete = copy_backup(folder, tmp_path / "incomplete")
    edit_manifest(incomplete, files=None)
    cases.append((incomplete, "not a chatd backup manifest"))
    missing = copy_backup(folder, tmp_path / "missing")
    data_file(missing).unlink()
    cases.append((missing, "missing"))
    outside = copy_backup(folder, tmp_path / "outside")
    edit_manifest(outside, files=[{"name": "../backups/x", "size": 1, "sha256": "0" * 64}])
    cases.append((outside, "outside the backup"))

    for path, match in cases:
        await _refused_and_unchanged(namespace, settings, path, match)
    await all_answer(make_api, kept)
    # The folder of backups itself restores (its newest backup) after all that.
    assert restoring.find_backup(tmp_path / "backups") == folder


async def test_a_store_with_an_application_is_replaced_only_with_force(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path, drop_afterwards: list[str], request: pytest.FixtureRequest
) -> None:
    settings, api, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    later = await seed(api, "later", 2)  # created after the backup: only the current store has it

    before = await store_state(namespace)
    with pytest.raises(BackupRefused, match=r"holds 2 applications.*--force"):
        await _restore(settings, folder)
    assert await store_state(namespace) == before
    await all_answer(make_api, kept, later)
    await api.client.close()

    report = await _restore(settings, folder, force=True)
    assert report.replaced is not None
    if namespace.backend_set == "real":
        drop_afterwards.append(report.replaced)
        assert re.fullmatch(re.escape(f"{namespace.name}__replaced_") + STAMP.pattern, report.replaced)
        assert await mysql_databases(namespace.name) == {namespace.name, report.replaced}
        old: SqliteStore | MysqlStore = MysqlStore(f"{MYSQL_URL}/{report.replaced}")
    else:
        replaced = Path(report.replaced)
        assert replaced.parent.resolve() == store_path(namespace).parent.resolve()
        assert re.fullmatch(r"chatd\.db\.replaced-" + STAMP.pattern, replaced.name)
        with closing(sqlite3.connect(replaced.absolute().as_uri() + "?mode=ro", uri=True)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        old = SqliteStore(f"sqlite:///{replaced}")
    async with old:  # the old store is whole: both applications and their messages
        for seeded in (kept, later):
            application = await old.get_application(seeded.token)
            assert application is not None
            stored = await old.list_messages_after(application.id, seeded.chat, 0, 100)
            assert {m.number: m.content for m in stored} == seeded.texts

    restored = await make_api()
    await answers(restored, kept)
    await restored.get_json(f"/applications/{later.token}", status=404)


async def test_a_backup_of_one_engine_is_refused_by_the_other(namespace: Namespace, make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    before = await store_state(namespace)
    if namespace.backend_set == "real":
        other = embedded_settings(tmp_path / "other")
        with pytest.raises(BackupRefused, match="backup is of a mysql store; this chatd's store is sqlite"):
            await _restore(other, folder, force=True)
        assert not (tmp_path / "other").exists()
    else:
        # Port 1: a restore that went as far as connecting would fail otherwise than refused.
        other = Settings(database_url="mysql://chatd:chatd@127.0.0.1:1/chatd_t_other")
        with pytest.raises(BackupRefused, match="backup is of a sqlite store; this chatd's store is mysql"):
            await _restore(other, folder, force=True)
    assert await store_state(namespace) == before
    await all_answer(make_api, kept)


@pytest.mark.parametrize("backend_set", [REAL])
async def test_a_truncated_dump_with_a_matching_checksum_is_refused(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path
) -> None:
    settings, api, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    sql = gzip.decompress(data_file(folder).read_bytes())
    cut = copy_backup(folder, tmp_path / "cut")
    replace_data(cut, gzip.compress(sql[: sql.index(b"-- Dump completed")]))
    read_verified(cut)  # size and checksum match: only loading it can tell

    await _refused_and_unchanged(namespace, settings, cut, "truncated")
    assert await mysql_databases(namespace.name) == {namespace.name}  # no __restoring, no __replaced
    await all_answer(make_api, kept)

    await api.client.close()
    await lose_the_store(namespace)
    with pytest.raises(BackupRefused, match="truncated"):
        await _restore(settings, cut)
    assert await mysql_databases(namespace.name) == set()
    await _restore(settings, folder)
    await all_answer(make_api, kept)


def _unsound_copies(folder: Path, into: Path) -> list[Path]:
    """Copies of an embedded backup whose store.db.gz, checksummed anew, does not give a sound SQLite file."""
    packed = data_file(folder).read_bytes()
    database = gzip.decompress(packed)
    broken = {
        "not a database": gzip.compress(b"not a database\n" * 1000),
        "half a database": gzip.compress(database[: len(database) // 2]),
        "not gzip": database,
        "a cut gzip stream": packed[: len(packed) // 2],
    }
    copies = []
    for name, data in broken.items():
        copy = copy_backup(folder, into / name)
        replace_data(copy, data)
        read_verified(copy)  # size and checksum match: only reading the store can tell
        copies.append(copy)
    return copies


@pytest.mark.parametrize("backend_set", ["embedded"])
async def test_a_store_file_that_is_not_a_sound_database_is_refused(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path
) -> None:
    settings, api, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    await api.client.close()
    await lose_the_store(namespace)
    for copy in _unsound_copies(folder, tmp_path / "unsound"):
        with pytest.raises(BackupRefused, match=r"cannot be read|integrity check"):
            await _restore(settings, copy)
        assert not list(namespace.folder.glob("chatd.db*")), copy.name  # no store, no .restoring file
    await _restore(settings, folder)
    await all_answer(make_api, kept)


@pytest.mark.parametrize("backend_set", ["embedded"])
async def test_a_store_file_that_is_not_a_sound_database_leaves_the_store_as_it_was(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path
) -> None:
    settings, api, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    await api.client.close()
    for copy in _unsound_copies(folder, tmp_path / "unsound"):
        await _refused_and_unchanged(namespace, settings, copy, r"cannot be read|integrity check")
        assert not (namespace.folder / "chatd.db.restoring").exists(), copy.name
    await all_answer(make_api, kept)


@pytest.mark.parametrize("backend_set", [REAL])
async def test_a_dump_cut_mid_statement_is_refused_as_truncated(namespace: Namespace, make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, _, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    sql = gzip.decompress(data_file(folder).read_bytes())
    cut = copy_backup(folder, tmp_path / "cut")
    # Inside the first message's row: what a copy cut at any byte leaves most of the time.
    replace_data(cut, gzip.compress(sql[: sql.index(b"INSERT INTO `messages`") + 40]))

    await _refused_and_unchanged(namespace, settings, cut, "truncated")
    await all_answer(make_api, kept)


@pytest.mark.parametrize("backend_set", ["embedded"])
async def test_a_sound_sqlite_file_that_is_not_a_chatd_store_is_refused(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path
) -> None:
    settings, api, kept, folder = await _seeded_backup(namespace, make_api, tmp_path)
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.commit()
    stranger = copy_backup(folder, tmp_path / "stranger")
    replace_data(stranger, gzip.compress(other.read_bytes()))
    await api.client.close()
    await lose_the_store(namespace)

    with pytest.raises(BackupRefused, match="lacks chatd's tables"):
        await _restore(settings, stranger)
    assert not list(namespace.folder.glob("chatd.db*"))
    await _restore(settings, folder)
    await all_answer(make_api, kept)
