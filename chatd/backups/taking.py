"""``chatd backup DIR``: one new backup of the store in DIR, the oldest pruned, a metric written.

Each backup is a folder ``chatd-backup-<UTC time>`` holding the store's data and its manifest.
It is written under a hidden name and renamed once complete, so a folder with the final name is
always a whole backup. Only the store is backed up: the search index is rebuilt from it, Redis
holds caches, leases and fan-out only, and the queues hold work the workers drain (a restore
replays what is still queued; ``chatd.backups.survivors``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chatd.backends.sqlite_db import path_from_url
from chatd.backups import sqlite_engine
from chatd.backups.manifest import MANIFEST, Manifest, write_atomically
from chatd.settings import Settings

PREFIX = "chatd-backup-"
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class BackupReport:
    folder: Path
    manifest: Manifest
    seconds: float
    size: int
    pruned: list[Path]


async def take_backup(
    settings: Settings,
    into: Path,
    keep: int | None = None,
    metrics_file: Path | None = None,
    clock: Clock = utc_now,
) -> BackupReport:
    """Write a new backup of ``settings``' store into ``into``; keep the newest ``keep``."""
    began = time.monotonic()
    into.mkdir(parents=True, exist_ok=True)
    started = clock()
    name = _free_name(into, PREFIX + started.strftime("%Y%m%dT%H%M%SZ"))
    partial = into / f".{name}.partial"
    partial.mkdir()
    try:
        if settings.database_url.startswith("mysql://"):
            manifest = await _mysql(settings, partial, started, clock)
        else:
            store_path = path_from_url(settings.database_url)
            manifest = await asyncio.to_thread(sqlite_engine.back_up, store_path, partial, started, clock)
        manifest.write(partial)
        _sync(partial)
        folder = into / name
        os.replace(partial, folder)
        _sync(into)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    size = sum(path.stat().st_size for path in folder.iterdir())
    pruned = prune(into, keep) if keep else []
    report = BackupReport(folder, manifest, time.monotonic() - began, size, pruned)
    if metrics_file is not None:
        write_metrics(metrics_file, report)
    return report


async def _mysql(settings: Settings, folder: Path, started: datetime, clock: Clock) -> Manifest:
    from chatd.backends.mysql_store import MysqlStore
    from chatd.backups import mysql_engine

    async with MysqlStore(settings.database_url) as store:
        return await mysql_engine.back_up(store.target, store, folder, started, clock)


def backups_in(folder: Path) -> list[Path]:
    """The complete backups in ``folder``, oldest first (their names sort by time)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / MANIFEST).is_file())


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete backups, and hidden partial ones left by a crash."""
    complete = backups_in(folder)
    doomed = complete[: max(len(complete) - keep, 0)]
    doomed += [p for p in folder.iterdir() if p.name.startswith("." + PREFIX) and p.name.endswith(".partial")]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def write_metrics(path: Path, report: BackupReport) -> None:
    """The last success, for node_exporter's textfile collector (replaced whole, never half-written)."""
    lines = [
        "# HELP chatd_backup_last_success_timestamp_seconds When the snapshot of the last successful backup began.",
        "# TYPE chatd_backup_last_success_timestamp_seconds gauge",
        f"chatd_backup_last_success_timestamp_seconds {report.manifest.taken_at.timestamp():.3f}",
        "# HELP chatd_backup_duration_seconds How long the last successful backup took.",
        "# TYPE chatd_backup_duration_seconds gauge",
        f"chatd_backup_duration_seconds {report.seconds:.3f}",
        "# HELP chatd_backup_size_bytes The size of the last successful backup.",
        "# TYPE chatd_backup_size_bytes gauge",
        f"chatd_backup_size_bytes {report.size}",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0644: node_exporter runs as a user of its own (chatd's umask would make it 0600).
    write_atomically(path, ("\n".join(lines) + "\n").encode(), mode=0o644)


def _free_name(folder: Path, name: str) -> str:
    candidate, n = name, 1
    while (folder / candidate).exists() or (folder / f".{candidate}.partial").exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _sync(directory: Path) -> None:
    """fsync a directory's files and the directory, so that they and its renames survive a power cut."""
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
