"""A full disk under load, then space back: answers are 201 or 503 in time, nothing acked is lost.

The data of the store sits on a small tmpfs of its own (``mount -t tmpfs``, root only); once the
load runs, a filler file takes every free byte for ``FULL_SECONDS``, then goes. The verdict is the
one of every fault (tests/faults/verify.py), stored rows read straight from the store:

- the embedded set: an api and a worker process on the embedded SQLite files (store, queue,
  counters, search), all on the tmpfs;
- MariaDB: a private MariaDB (tests/servers.py) whose data directory is the tmpfs, chatd's
  database migrated onto it; Redis, RabbitMQ and Elasticsearch are the shared ones.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from tests.conftest import Namespace, mysql_connection
from tests.faults.test_faults import Cluster, survive
from tests.servers import PrivateMariadb, running

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

FULL_SECONDS = 8.0


@contextmanager
def small_disk(path: Path, size_mib: int, *, owner: str | None = None) -> Iterator[Path]:
    """``path`` as the mount point of a ``size_mib`` MiB tmpfs, unmounted on the way out."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("a small disk is a tmpfs mount: run as root")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mib}m,mode=0755"
    if owner is not None:
        user = pwd.getpwnam(owner)
        options += f",uid={user.pw_uid},gid={user.pw_gid}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(folder: Path) -> Path:
    """A file in ``folder`` that takes every byte left on its file system."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as file:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    file.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    assert shutil.disk_usage(folder).free < 1 << 16, "the disk still has room"
    return filler


def full_disk(folder: Path, *, server: PrivateMariadb | None = None):  # type: ignore[no-untyped-def]
    """Fill ``folder``'s disk for FULL_SECONDS, then free it.

    InnoDB aborts the whole server when a rollback finds no room for its undo records
    ("[FATAL] InnoDB: Error (Out of disk space) in rollback", MariaDB 10.11): when ``server`` died
    so, it is started again once space is back, as Debian's mariadb.service does
    (``Restart=on-abnormal``). chatd must keep every promise through that too.
    """

    async def fault(cluster: Cluster) -> None:
        filler = await asyncio.to_thread(fill, folder)
        await asyncio.sleep(FULL_SECONDS)
        filler.unlink()
        if server is not None and server.process is not None and server.process.poll() is not None:
            print(f"private MariaDB exited with {server.process.returncode} on the full disk: started again")
            await server.start()

    return fault


async def test_embedded_disk_full(tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    with small_disk(tmp_path / "data", 96) as data:
        namespace = Namespace("embedded", data)  # every embedded file on the small disk; logs are not
        cluster = Cluster(namespace, tmp_path, roles=("api", "worker"))
        await survive(
            f"embedded store's disk full {FULL_SECONDS:g} s",
            cluster,
            full_disk(data),
            record_fault,
            database=f"sqlite:///{data}/chatd.db",
        )


class SmallMariadb(PrivateMariadb):
    """A private MariaDB whose files fit a small disk (16 MiB of redo log instead of 96), its logs elsewhere."""

    def __init__(self, folder: Path, logs: Path):
        super().__init__(folder)
        self.logs = logs

    @property
    def log(self) -> Path:
        return self.logs / "mariadb.log"

    def command(self) -> list[str]:
        command = [arg for arg in super().command() if not arg.startswith("--log-error=")]
        return [*command, f"--log-error={self.logs}/mariadb-error.log", "--innodb-log-file-size=16M", "--skip-log-bin"]


@asynccontextmanager
async def mariadb_on_small_disk(size_mib: int, keep_logs: Path) -> AsyncIterator[tuple[SmallMariadb, Path]]:
    """A private MariaDB whose data directory is a ``size_mib`` MiB tmpfs; its logs copied to ``keep_logs``."""
    # The mysql user must reach the folder: a tempfile directory, not pytest's tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="chatd-diskfull-"))
    logs = folder / "logs"
    logs.mkdir()
    shutil.chown(folder, "mysql", "mysql")
    shutil.chown(logs, "mysql", "mysql")
    try:
        with small_disk(folder / "data", size_mib, owner="mysql") as data:
            async with running(SmallMariadb(folder, logs)) as server:
                yield server, data
    finally:
        shutil.copytree(logs, keep_logs, dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.real
async def test_mariadb_disk_full(tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    async with mariadb_on_small_disk(192, tmp_path / "mariadb-logs") as (mariadb, data):
        namespace = Namespace("real", tmp_path)
        async with mysql_connection(url=mariadb.url) as conn, conn.cursor() as cursor:
            await cursor.execute(f"CREATE DATABASE `{namespace.name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        database = f"{mariadb.url}/{namespace.name}"
        cluster = Cluster(namespace, tmp_path, database_url=database)
        await survive(
            f"mariadb's disk full {FULL_SECONDS:g} s",
            cluster,
            full_disk(data, server=mariadb),
            record_fault,
            database=database,
        )
