"""``chatd backup`` and ``chatd restore`` as an operator runs them: the command in a process of its own.

On the embedded set, with the store written first by a served app (``make_api``): one application,
two chats, five messages stored and two more acked but still queued (in the store's file, so in
the backup: a restore replays them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import sys
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import chatd
from chatd.backends.sqlite_store import SqliteStore
from chatd.backups import taking
from chatd.backups.manifest import Manifest, sha256_of
from chatd.domain import NumberScope
from chatd.migrations import migration_files
from chatd.settings import Settings
from tests.backups.conftest import mode_of, store_of
from tests.conftest import BACKEND_SETS, Api, Namespace, embedded_settings

# A deadline for each command: it takes well under a second here.
DEADLINE = 60.0


@pytest.fixture
def backend_set() -> str:
    return "embedded"


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class Written:
    """What the served app wrote before the backup."""

    token: str
    application_id: int
    chat: int
    empty_chat: int
    texts: dict[int, str]  # every acked message of ``chat``, the queued ones too
    stored: int


async def chatd_command(*args: str, settings: Settings, cwd: Path) -> Ran:
    """``python -m chatd ARGS`` with only the store's and the search file's settings in its environment."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CHATD_")}
    env.update(CHATD_DATABASE_URL=settings.database_url, CHATD_SEARCH_PATH=settings.search_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatd",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def _write(api: Api) -> Written:
    token = await api.create_application("operated")
    chat = await api.create_chat(token)
    empty_chat = await api.create_chat(token)
    texts = {}
    for i in range(5):
        texts[await api.create_message(token, chat, f"stored {i}")] = f"stored {i}"
    await api.settle()
    for i in range(2):  # acked, not stored: their jobs wait in the queue, in the store's file
        texts[await api.create_message(token, chat, f"queued {i}")] = f"queued {i}"
    application = await store_of(api).get_application(token)
    assert application is not None
    return Written(token, application.id, chat, empty_chat, texts, stored=5)


async def _backup(settings: Settings, into: Path, *args: str) -> tuple[Ran, Path]:
    ran = await chatd_command("backup", str(into), *args, settings=settings, cwd=into.parent)
    assert ran.code == 0, ran.err
    found = re.fullmatch(
        r"backup (\S+): 1 applications, 2 chats, 5 messages; ([\d,]+) bytes in [\d.]+ s(; pruned \d+)?\n", ran.out
    )
    assert found, ran.out
    return ran, Path(found[1])


async def test_backup_keeps_the_newest_and_publishes_the_last_success(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path
) -> None:
    settings = await namespace.settings()
    await _write(await make_api())
    backups = tmp_path / "backups"  # made by chatd
    metrics = tmp_path / "textfile" / "chatd_backup.prom"
    metrics.parent.mkdir(mode=0o755)

    taken = []
    for run in range(3):
        ran, folder = await _backup(settings, backups, "--keep", "2", "--metrics-file", str(metrics))
        assert ran.out.rstrip().endswith("; pruned 1") == (run == 2), ran.out
        taken.append(folder)
    assert taking.backups_in(backups) == taken[1:]
    assert sorted(backups.iterdir()) == taken[1:]  # nothing else: no partial backup left

    # The backups hold every token: the operator's user alone reads them.
    assert mode_of(backups) == 0o700
    for folder in taken[1:]:
        assert mode_of(folder) == 0o700
        assert {path.name: mode_of(path) for path in folder.iterdir()} == {"manifest.json": 0o600, "store.db.gz": 0o600}

    newest = Manifest.from_json((taken[-1] / "manifest.json").read_bytes())
    families = {family.name: family for family in text_string_to_metric_families(metrics.read_text())}
    assert set(families) == {
        "chatd_backup_last_success_timestamp_seconds",
        "chatd_backup_duration_seconds",
        "chatd_backup_size_bytes",
    }
    values = {}
    for name, family in families.items():
        assert family.type == "gauge"
        [sample] = family.samples
        assert sample.name == name and sample.labels == {}
        values[name] = sample.value
    assert abs(values["chatd_backup_last_success_timestamp_seconds"] - newest.taken_at.timestamp()) < 0.002
    assert 0 < values["chatd_backup_duration_seconds"] < DEADLINE
    assert values["chatd_backup_size_bytes"] == sum(path.stat().st_size for path in taken[-1].iterdir())
    assert mode_of(metrics) == 0o644  # node_exporter reads it as a user of its own
    assert not list(metrics.parent.glob(".*"))  # written beside it and renamed: no partial file left


async def test_a_failed_backup_leaves_the_metrics_and_the_folder_as_they_were(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path
) -> None:
    settings = await namespace.settings()
    await _write(await make_api())
    backups = tmp_path / "backups"
    metrics = tmp_path / "chatd_backup.prom"
    await _backup(settings, backups, "--metrics-file", str(metrics))
    listing = sorted(path.name for path in backups.iterdir())
    published, stamp = metrics.read_bytes(), metrics.stat().st_mtime_ns

    garbage = tmp_path / "garbage" / "chatd.db"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a database\n" * 1000)
    failures = {
        "refused": embedded_settings(tmp_path / "gone"),  # no store there
        "failed": embedded_settings(garbage.parent),  # a store SQLite cannot read
    }
    for verdict, broken in failures.items():
        ran = await chatd_command(
            "backup", str(backups), "--keep", "1", "--metrics-file", str(metrics), settings=broken, cwd=tmp_path
        )
        assert ran.code == (2 if verdict == "refused" else 1), (verdict, ran.err)
        if verdict == "refused":
            assert "chatd backup: refused: there is no store at" in ran.err
        assert sorted(path.name for path in backups.iterdir()) == listing, verdict
        assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == (published, stamp), verdict
    assert not (tmp_path / "gone").exists()  # a backup never makes a store where there was none


async def test_restore_into_an_empty_store(namespace: Namespace, make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = await namespace.settings()
    written = await _write(await make_api())
    _, folder = await _backup(settings, tmp_path / "backups")
    target = embedded_settings(tmp_path / "restored")

    ran = await chatd_command("restore", str(tmp_path / "backups"), settings=target, cwd=tmp_path)
    assert ran.code == 0, ran.err
    assert ran.out.startswith(f"restored {folder} (taken "), ran.out
    assert "1 applications, 2 chats, 5 messages;" in ran.out
    assert "replayed 2 queued jobs (2 messages the backup lacked);" in ran.out
    assert "0 messages of applications the backup lacks left out;" in ran.out
    assert "reindexed 7 messages in" in ran.out
    assert "replaced" not in ran.out
    for stage in ("put back", "migrate", "replay queued jobs", "move sequences", "reindex"):
        assert f"restore: {stage}: done in" in ran.err

    async with SqliteStore(target.database_url) as store:
        assert await _messages(store, written) == written.texts
        # Every counter moved past the highest number known by the least skip (a quiet store).
        assert await store.last_number(NumberScope(written.application_id, written.chat)) == 7 + 1_000
        assert await store.last_number(NumberScope(written.application_id)) == 2 + 1_000


async def test_restore_into_a_store_with_data_needs_force(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = await namespace.settings()
    written = await _write(await make_api())
    await _backup(settings, tmp_path / "backups")
    target = embedded_settings(tmp_path / "restored")
    first = await chatd_command("restore", str(tmp_path / "backups"), settings=target, cwd=tmp_path)
    assert first.code == 0, first.err
    store_file = tmp_path / "restored" / "chatd.db"
    inode = store_file.stat().st_ino

    again = await chatd_command("restore", str(tmp_path / "backups"), settings=target, cwd=tmp_path)
    assert again.code == 2, again.err
    refusal = again.err.splitlines()[-1]  # after the log lines
    assert refusal.startswith("chatd restore: refused: the store (") and "--force" in refusal, again.err
    assert store_file.stat().st_ino == inode
    assert not list(store_file.parent.glob("chatd.db.re*"))

    forced = await chatd_command(
        "restore", str(tmp_path / "backups"), "--force", "--min-skip", "5", settings=target, cwd=tmp_path
    )
    assert forced.code == 0, forced.err
    kept = re.search(r"; the replaced store is kept as (\S+)$", forced.out.rstrip())
    assert kept, forced.out
    assert Path(kept[1]).name.startswith("chatd.db.replaced-") and Path(kept[1]).is_file()
    async with SqliteStore(target.database_url) as store:
        assert await _messages(store, written) == written.texts
        # The highest number known (7 messages, 2 chats, application 1) plus --min-skip.
        assert await store.last_number(NumberScope(written.application_id, written.chat)) == 7 + 5
        assert await store.last_number(NumberScope(written.application_id)) == 2 + 5
        created = await store.create_application("t" * 32, "after", datetime.now(UTC))
        assert created.id == 1 + 5 + 1


async def test_the_manifest_records_what_the_backup_holds(namespace: Namespace, make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = await namespace.settings()
    api = await make_api()
    written = await _write(api)
    began = datetime.now(UTC)
    _, folder = await _backup(settings, tmp_path / "backups")
    ended = datetime.now(UTC)

    manifest = json.loads((folder / "manifest.json").read_bytes())
    assert manifest["format"] == 1
    assert manifest["engine"] == "sqlite"
    assert manifest["chatd_version"] == chatd.__version__
    with closing(sqlite3.connect((namespace.folder / "chatd.db").absolute().as_uri() + "?mode=ro", uri=True)) as conn:
        applied = [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert manifest["schema"] == applied == [name for name, _ in migration_files("sqlite")]
    assert manifest["counts"] == {"applications": 1, "chats": 2, "messages": written.stored}
    app, chat = written.application_id, written.chat
    assert manifest["sequences"] == {
        "applications": {"reserved": app, "stored": app},
        f"chats:{app}": {"reserved": 2, "stored": 2},
        # Seven numbers handed out, five of them stored (two still queued); the empty chat has none.
        f"messages:{app}:{chat}": {"reserved": len(written.texts), "stored": written.stored},
    }
    assert manifest["taken_last_hour"] == {"applications": 1, f"chats:{app}": 2, f"messages:{app}:{chat}": 5}
    data = folder / "store.db.gz"
    assert manifest["files"] == [{"name": "store.db.gz", "size": data.stat().st_size, "sha256": sha256_of(data)}]
    assert manifest["store_identity"] == await store_of(api).identity()
    taken_at = datetime.fromisoformat(manifest["taken_at"])
    finished_at = datetime.fromisoformat(manifest["finished_at"])
    # Written to the millisecond, cut (not rounded).
    assert began - timedelta(milliseconds=1) <= taken_at <= finished_at <= ended


@pytest.mark.parametrize("backend_set", BACKEND_SETS)
async def test_the_manifest_is_finished_once_the_data_is_written(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = await namespace.settings()
    await _write(await make_api())
    backups = tmp_path / "backups"
    # What the clock saw when it was read: the data file written yet, or not.
    seen: list[bool] = []

    def clock() -> datetime:
        seen.append(any(backups.glob("*/store.*.gz")) or any(backups.glob(".*/store.*.gz")))
        return datetime.now(UTC) + timedelta(seconds=len(seen))

    report = await taking.take_backup(settings, backups, clock=clock)
    assert seen == [False, True]  # taken_at before the snapshot, finished_at once its data is written
    assert report.manifest.finished_at > report.manifest.taken_at


async def _messages(store: SqliteStore, written: Written) -> dict[int, str]:
    return {m.number: m.content for m in await store.list_messages_after(written.application_id, written.chat, 0, 100)}
