"""Backing up and putting back the embedded store: one SQLite file.

The backup is SQLite's ``VACUUM INTO``: one read transaction on the live store, so a consistent
snapshot of every table (the embedded queue's jobs too: they are restored with the rows they
belong to), written compact into a new file while chatd goes on writing (WAL: readers do not
block writers). Never a copy of the file, which in WAL mode misses what the -wal file still
holds. The snapshot is then read for the manifest and compressed.

A restore decompresses it beside the store, checks it (``PRAGMA integrity_check``) and only
then renames it into place, so a failure at any step leaves the store as it was. A store
that is replaced (``--force``) is renamed aside with its -wal and -shm files, still whole.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from chatd import __version__
from chatd.backends import sqlite_sequences
from chatd.backends.sqlite_store import IDENTITY_TABLE
from chatd.backups.manifest import PACE_WINDOW_SECONDS, BackupRefused, Manifest, describe

ENGINE = "sqlite"
DATA = "store.db.gz"
# zlib level 3: most of level 6's ratio on chat text, at about twice its speed.
COMPRESSION = 3
_SIDE_FILES = ("-wal", "-shm")
# The tables a restore requires in the backup's store before it moves anything (as mysql_engine).
_REQUIRED = {"applications", "chats", "messages", "number_counters", "schema_migrations"}


def back_up(store_path: str, folder: Path, started: datetime, now: Callable[[], datetime]) -> Manifest:
    """Snapshot the store at ``store_path`` into ``folder`` and describe it; ``started``: the snapshot's time.

    ``now()`` is read once the data is written: the manifest's ``finished_at``.
    """
    if not Path(store_path).is_file():
        raise BackupRefused(f"there is no store at {store_path}")
    snapshot = folder / "store.db"
    with closing(sqlite3.connect(store_path)) as live:
        live.execute("PRAGMA busy_timeout = 30000")
        live.execute("VACUUM INTO ?", (str(snapshot),))
    with closing(sqlite3.connect(snapshot)) as conn:
        manifest = Manifest(
            engine=ENGINE,
            chatd_version=__version__,
            schema=[row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")],
            taken_at=started,
            finished_at=started,  # set below, once the data is written
            counts={
                table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for table in ("applications", "chats", "messages")
            },
            sequences=sqlite_sequences.sequences(conn),
            taken_last_hour=sqlite_sequences.taken_since(conn, started - timedelta(seconds=PACE_WINDOW_SECONDS)),
            files=[],
            store_identity=_identity(conn),
        )
    with snapshot.open("rb") as source, gzip.open(folder / DATA, "wb", compresslevel=COMPRESSION) as out:
        shutil.copyfileobj(source, out, 1 << 20)
    snapshot.unlink()
    return replace(manifest, files=describe(folder, [DATA]), finished_at=now())


def _identity(conn: sqlite3.Connection) -> str:
    found = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (IDENTITY_TABLE,))
    if not found.fetchone()[0]:
        return ""
    return str(conn.execute(f"SELECT id FROM {IDENTITY_TABLE}").fetchone()[0])


def applications_in(store_path: str) -> int:
    """How many applications the store at ``store_path`` holds (0 for no file, or no tables yet)."""
    if not Path(store_path).is_file():
        return 0
    # A URI built by pathlib: "file:" + the path breaks on "//abs" (what sqlite:////abs names) and on "?#%".
    with closing(sqlite3.connect(Path(store_path).absolute().as_uri() + "?mode=ro", uri=True)) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM applications").fetchone()[0])
        except sqlite3.OperationalError:  # no such table: a file never migrated
            return 0


def put_back(folder: Path, store_path: str, stamp: str) -> Path | None:
    """Make the backup in ``folder`` the store at ``store_path``; return where the old store went.

    The old store, if any, is renamed aside (with its -wal and -shm) to ``<name>.replaced-<stamp>``.
    """
    target = Path(store_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.restoring")
    staging.unlink(missing_ok=True)
    try:
        with gzip.open(folder / DATA, "rb") as source, staging.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        with closing(sqlite3.connect(staging)) as conn:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if verdict != "ok":
            raise BackupRefused(f"the backup's store fails SQLite's integrity check: {verdict}")
        if not _REQUIRED <= tables:
            raise BackupRefused(f"the backup's store lacks chatd's tables: {', '.join(sorted(_REQUIRED - tables))}")
    except (OSError, EOFError, sqlite3.DatabaseError) as exc:
        staging.unlink(missing_ok=True)
        raise BackupRefused(f"the backup's store cannot be read: {exc}") from exc
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    replaced = None
    if target.exists():
        replaced = target.with_name(f"{target.name}.replaced-{stamp}")
        for suffix in _SIDE_FILES:
            side = Path(f"{target}{suffix}")
            if side.exists():
                os.replace(side, f"{replaced}{suffix}")
        os.replace(target, replaced)
    os.replace(staging, target)
    return replaced
