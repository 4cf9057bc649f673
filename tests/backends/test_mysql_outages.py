"""MySQL/MariaDB's "not now" errors become BackendUnavailable, by cause, in ``MysqlDatabase.run``.

Provoked for real on the test server where that disturbs no one: a full table (a MEMORY table
past max_heap_table_size, the same error 1114 as an InnoDB tablespace on a full disk), a lock
held by another connection (1205, after run's own retries), a server nobody listens on. The
others (a read-only server, a full disk's errno 28, too many connections) would take the shared
server down for everyone: their errors are made as pymysql makes them from the server's packet.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiomysql
import pymysql
import pytest
from pymysql.err import raise_mysql_exception

from chatd.backends.mysql_db import MysqlDatabase, MysqlTarget, outage_cause, outage_of
from chatd.errors import BackendUnavailable
from tests.conftest import MYSQL_URL, create_mysql_database, drop_mysql_database, mysql_connection
from tests.servers import free_port

pytestmark = pytest.mark.real


@pytest.fixture
async def db() -> AsyncIterator[MysqlDatabase]:
    name = "chatd_t_" + uuid.uuid4().hex[:12]
    await create_mysql_database(name)
    database = MysqlDatabase(MysqlTarget.parse(f"{MYSQL_URL}/{name}?pool_size=2&timeout=10"))
    try:
        await database.open()
        yield database
    finally:
        await database.close()
        await drop_mysql_database(name)


async def test_a_full_table_is_disk_full(db: MysqlDatabase) -> None:
    async def fill(cursor: aiomysql.Cursor) -> None:
        await cursor.execute("SET SESSION max_heap_table_size = 16384")
        await cursor.execute("CREATE TEMPORARY TABLE heap (b VARCHAR(500)) ENGINE=MEMORY")
        for _ in range(1000):
            await cursor.execute("INSERT INTO heap VALUES (REPEAT('x', 500))")

    with pytest.raises(BackendUnavailable) as raised:
        await db.run(fill, commit=True)
    assert (raised.value.backend, raised.value.cause) == ("mysql", "disk_full")
    assert isinstance(raised.value.__cause__, pymysql.err.OperationalError)
    assert raised.value.__cause__.args[0] == 1114


async def test_a_lock_still_held_after_the_retries_is_locked(db: MysqlDatabase) -> None:
    async def create(cursor: aiomysql.Cursor) -> None:
        await cursor.execute("CREATE TABLE t (n INT PRIMARY KEY) ENGINE=InnoDB")
        await cursor.execute("INSERT INTO t VALUES (1)")

    await db.run(create, commit=True)
    attempts = 0

    async def take_the_row(cursor: aiomysql.Cursor) -> None:
        nonlocal attempts
        attempts += 1
        # NOWAIT: the lock wait timeout (1205) at once instead of after innodb_lock_wait_timeout.
        await cursor.execute("SELECT n FROM t WHERE n = 1 FOR UPDATE NOWAIT")

    async with mysql_connection(db.target.database) as holder, holder.cursor() as cursor:
        await cursor.execute("BEGIN")
        await cursor.execute("SELECT n FROM t WHERE n = 1 FOR UPDATE")
        with pytest.raises(BackendUnavailable) as raised:
            await db.run(take_the_row, commit=True)
        await cursor.execute("ROLLBACK")
    assert (raised.value.backend, raised.value.cause) == ("mysql", "locked")
    assert attempts == 5  # retried first, as a conflict InnoDB rolled back may pass
    attempts = 0
    await db.run(take_the_row, commit=True)  # the lock is free again
    assert attempts == 1


async def test_an_error_in_the_work_is_not_an_outage(db: MysqlDatabase) -> None:
    async def wrong(cursor: aiomysql.Cursor) -> None:
        await cursor.execute("SELECT * FROM no_such_table")

    with pytest.raises(pymysql.err.ProgrammingError):
        await db.run(wrong, commit=False)


async def test_a_server_nobody_listens_on_is_a_connection_outage() -> None:
    db = MysqlDatabase(MysqlTarget.parse(f"mysql://chatd:chatd@127.0.0.1:{free_port()}/chatd?connect_timeout=2"))
    with pytest.raises(BackendUnavailable) as raised:
        await db.open()
    assert (raised.value.backend, raised.value.cause) == ("mysql", "connection")


def server_error(code: int, message: str) -> pymysql.MySQLError:
    """The exception pymysql raises for an error packet with this code and message."""
    packet = b"\xff" + code.to_bytes(2, "little") + b"#HY000" + message.encode()
    try:
        raise_mysql_exception(packet)
    except pymysql.MySQLError as exc:
        return exc
    raise AssertionError("raise_mysql_exception did not raise")


@pytest.mark.parametrize(
    ("code", "message", "cause"),
    [
        (
            1290,
            "The MariaDB server is running with the --read-only option so it cannot execute this statement",
            "read_only",
        ),
        (1290, "The MySQL server is running with the --super-read-only option so it cannot execute this", "read_only"),
        (1290, "The MySQL server is running with the --secure-file-priv option so it cannot execute this", None),
        (1836, "Running in read-only mode", "read_only"),
        (1036, "Table 'messages' is read only", "read_only"),
        (1021, "Disk full (/var/tmp/#sql_1.MAI); waiting for someone to free some space...", "disk_full"),
        (3, "Error writing file './chatd/messages.ibd' (Errcode: 28 \"No space left on device\")", "disk_full"),
        (3, "Error writing file './chatd/messages.ibd' (Errcode: 5 \"Input/output error\")", "io_error"),
        (1030, 'Got error 28 "No space left on device" from storage engine InnoDB', "disk_full"),
        (1030, 'Got error 168 "Unknown (generic) error from engine" from storage engine InnoDB', None),
        (1114, "The table 'messages' is full", "disk_full"),
        (1040, "Too many connections", "too_many_connections"),
        (1213, "Deadlock found when trying to get lock; try restarting transaction", "deadlock"),
        (1969, "Query execution was interrupted (max_statement_time exceeded)", "timeout"),
        (1927, "Connection was killed", "connection"),
        (1062, "Duplicate entry '1' for key 'PRIMARY'", None),
        (1064, "You have an error in your SQL syntax", None),
    ],
)
def test_server_errors_by_cause(code: int, message: str, cause: str | None) -> None:
    exc = server_error(code, message)
    assert outage_cause(exc) == cause
    outage = outage_of(exc)
    assert (outage.backend, outage.cause) == ("mysql", cause) if outage else cause is None


def test_client_side_failures_by_cause() -> None:
    assert outage_cause(pymysql.err.OperationalError(2013, "Lost connection to server during query")) == "connection"
    assert outage_cause(pymysql.err.InterfaceError(0, "")) == "connection"
    assert outage_cause(ConnectionRefusedError()) == "connection"
    assert outage_cause(TimeoutError()) == "timeout"
    assert outage_cause(ValueError("not the server's")) is None
