"""The promotion runbook: `services.sh cluster promote` applies what the replica received, and
`chatd promote` refuses a server that is not promoted yet, and a store that has no replica."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiomysql
import pytest

from chatd.settings import Settings
from tests.cluster.test_node_loss import REPLICA_URL
from tests.conftest import Namespace, mysql_connection, unique_name
from tests.faults.test_faults import services
from tests.processes import settings_env

pytestmark = [pytest.mark.cluster, pytest.mark.real, pytest.mark.timeout(120)]


async def promote(settings: Settings) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatd",
        "promote",
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return int(process.returncode or 0), output.decode()


async def test_a_replica_still_replicating_is_refused_and_left_alone(tmp_path: Path) -> None:
    namespace = Namespace("real", tmp_path)
    try:
        settings = await namespace.serving_settings()
        code, said = await promote(settings.replace(database_url=f"{REPLICA_URL}/{namespace.name}"))
        assert code == 2, said
        assert "not promoted yet: it is read-only" in said
    finally:
        await namespace.cleanup()


async def test_an_embedded_store_is_refused(tmp_path: Path) -> None:
    code, said = await promote(Settings(database_url=f"sqlite:///{tmp_path}/chatd.db"))
    assert code == 2, said
    assert "chatd promote is for a MariaDB/MySQL store" in said


async def replica_at(replica: aiomysql.Cursor, position: str, what: str, within: float = 30.0) -> None:
    """Wait until the replica has ``what`` ("received", in its relay log, or "applied") up to ``position``."""
    query = {"received": "SHOW SLAVE STATUS", "applied": "SELECT @@gtid_slave_pos AS Gtid_IO_Pos"}[what]
    deadline = asyncio.get_running_loop().time() + within
    while True:
        await replica.execute(query)
        reached = (await replica.fetchone())["Gtid_IO_Pos"]
        if reached == position:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{what} up to {reached}, not {position}"
        await asyncio.sleep(0.1)


async def test_a_replica_whose_replication_stopped_is_promoted_with_what_it_applied() -> None:
    """Stop 29's CI: replication was stopped while the relay log held transactions not applied yet,
    and the promotion waited 60 s for them with no SQL thread to apply them, then failed. MariaDB
    discards such a relay log, so the promotion goes on with what was applied."""
    name = unique_name()
    try:
        async with (
            mysql_connection(url=REPLICA_URL) as replica_conn,
            replica_conn.cursor(aiomysql.DictCursor) as replica,
            mysql_connection() as primary_conn,
            primary_conn.cursor() as primary,
        ):

            async def write(sql: str) -> str:
                await primary.execute(sql)
                await primary.execute("SELECT @@gtid_binlog_pos")
                return str((await primary.fetchone())[0])

            await write(f"CREATE DATABASE `{name}`")
            applied = await write(f"CREATE TABLE `{name}`.promised (number INT PRIMARY KEY)")
            await replica_at(replica, applied, "applied")
            await replica.execute("STOP SLAVE SQL_THREAD")
            received = await write(f"INSERT INTO `{name}`.promised VALUES (1), (2), (3)")
            await replica_at(replica, received, "received")
            await replica.execute("STOP SLAVE")  # as `cluster pause-replication` leaves it

            await services("cluster", "promote")  # the old script waited 60 s for nothing here, then failed

            await replica.execute("SELECT @@read_only AS read_only, @@gtid_slave_pos AS applied")
            assert await replica.fetchone() == {"read_only": 0, "applied": applied}
            await replica.execute(f"INSERT INTO `{name}`.promised VALUES (4)")  # it takes writes
    finally:
        await services("cluster", "reset-mariadb")
