"""``chatd restore PATH``: a backup made the store again, with every number kept a promise.

In order, each step only once the one before it succeeded:

1. the backup is checked whole (manifest, each file's size and checksum): a corrupt or
   truncated backup is refused before anything changes;
2. the store must be empty (no application), unless ``force``: then the old one is kept aside;
3. the backup becomes the store, atomically (``sqlite_engine.put_back``, ``mysql_engine.put_back``);
4. the schema is migrated forward, if the backup is older than this chatd;
5. what outlived the old store is replayed into it: queued jobs, then documents of the search
   index that the store lacks (``survivors``);
6. every sequence moves past the highest value anything knows, plus a skip (``fence``);
7. the cache is emptied (it may name applications the backup does not have), counts are
   recomputed, and the search index is rebuilt from the store (``chatd reindex``'s machinery).

Every chatd process of the deployment must be stopped while it runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from chatd import reindexing
from chatd.backends.registry import make_backends, opened
from chatd.backends.sqlite_db import path_from_url
from chatd.backups import fence, sqlite_engine, survivors
from chatd.backups.manifest import BackupRefused, Manifest, read_verified
from chatd.backups.taking import backups_in, utc_now
from chatd.settings import Settings


@dataclass
class RestoreReport:
    folder: Path
    manifest: Manifest
    replaced: str | None = None
    migrated: list[str] = field(default_factory=list)
    survivors: survivors.Survivors = field(default_factory=survivors.Survivors)
    # The smallest and largest distance a sequence moved past its highest known value.
    skips: tuple[int, int] = (0, 0)
    reindexed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def find_backup(path: Path) -> Path:
    """``path`` if it is a backup, else the newest complete backup in it."""
    if (path / "manifest.json").is_file():
        return path
    found = backups_in(path)
    if not found:
        raise BackupRefused(f"no chatd backup at {path} (a backup folder holds a manifest.json)")
    return found[-1]


async def restore(
    settings: Settings,
    path: Path,
    *,
    force: bool = False,
    min_skip: int = fence.MIN_SKIP,
    out: TextIO | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> RestoreReport:
    """Make the backup at ``path`` the store of ``settings``; raises BackupRefused before any change."""
    say = out if out is not None else sys.stderr
    folder = find_backup(path)
    began = time.monotonic()
    manifest = read_verified(folder)
    report = RestoreReport(folder, manifest, seconds={"verify": time.monotonic() - began})
    engine = "mysql" if settings.database_url.startswith("mysql://") else "sqlite"
    if manifest.engine != engine:
        raise BackupRefused(f"the backup is of a {manifest.engine} store; this chatd's store is {engine}")
    stamp = clock().strftime("%Y%m%dT%H%M%SZ")
    with _stage(report, "put back", say):
        if engine == "mysql":
            from chatd.backends.mysql_db import MysqlTarget
            from chatd.backups import mysql_engine

            target = MysqlTarget.parse(settings.database_url)
            held = await mysql_engine.applications_in(target)
            _refuse_unless_empty(held, force, f"database {target.database}")
            report.replaced = await mysql_engine.put_back(folder, target, stamp)
        else:
            store_path = path_from_url(settings.database_url)
            if store_path == ":memory:":
                raise BackupRefused("the store is in memory: there is nothing to restore into")
            _refuse_unless_empty(sqlite_engine.applications_in(store_path), force, store_path)
            replaced = sqlite_engine.put_back(folder, store_path, stamp)
            report.replaced = None if replaced is None else str(replaced)
    backends = make_backends(settings)
    async with opened(backends):
        store = backends.store
        with _stage(report, "migrate", say):
            report.migrated = await store.migrate()
        found = report.survivors
        with _stage(report, "replay queued jobs", say):
            await survivors.replay_queued(store, backends.queue, found)
        with _stage(report, "recover from the search index", say):
            await survivors.recover_from_index(store, backends.search, found)
        with _stage(report, "move sequences", say):
            restored = await store.sequences()
            elapsed = (clock() - manifest.taken_at).total_seconds()
            floors = fence.floors(manifest, restored, found.highest, elapsed, min_skip)
            report.skips = await fence.move_past(store, floors, restored, found.highest)
        with _stage(report, "clear the cache and recount", say):
            await backends.cache.clear()
            await store.recount_all()
        with _stage(report, "reindex", say):
            progress = reindexing.Progress(total=await store.count_messages(), stream=say)
            report.reindexed = (await reindexing.rebuild(store, backends.search, progress)).messages
    return report


def _refuse_unless_empty(applications: int, force: bool, where: str) -> None:
    if applications and not force:
        raise BackupRefused(
            f"the store ({where}) holds {applications:,} applications: restore into an empty store, or pass"
            " --force to replace it (the current store is kept aside, not deleted)"
        )


@contextmanager
def _stage(report: RestoreReport, name: str, out: TextIO) -> Iterator[None]:
    """Times a step of the restore and says when it is done."""
    started = time.monotonic()
    yield  # a step that raises is not reported: the exception says what happened
    report.seconds[name] = time.monotonic() - started
    print(f"restore: {name}: done in {report.seconds[name]:.1f} s", file=out, flush=True)
