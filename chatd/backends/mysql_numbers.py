"""The SQL behind MysqlStore.take_numbers: a group's numbers and idempotency keys in one transaction.

Runs inside a transaction the store opened (``MysqlDatabase.run``), at READ COMMITTED. Locks
are taken in one order, so that two groups wait for each other instead of deadlocking: the
idempotency rows a group inserts (in key order), then the counter rows (in scope order).

Round trips: one for a group without keys on MariaDB (add to the counters, RETURNING their new
values; two on MySQL, which reads them back), two more with keys (read the live records first,
write the new ones last), and the COMMIT. A group that met a chat ceiling takes one more, to set
the counters it passed back (``NumberingPlan.overshoot``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import aiomysql
import pymysql

from chatd.numbering import NumberingPlan, NumberRequest, Record, Taken

_ER_DUP_ENTRY = 1062


def milliseconds(seconds: float) -> int:
    """A time as stored in ``idempotency_keys.expires_at``: whole milliseconds since the epoch."""
    return math.floor(seconds * 1000)


def is_duplicate_key(exc: pymysql.err.IntegrityError) -> bool:
    return bool(exc.args) and exc.args[0] == _ER_DUP_ENTRY


async def take_numbers(
    cursor: aiomysql.Cursor, requests: Sequence[NumberRequest], now: float, key_ttl_seconds: float
) -> list[Taken]:
    """Number ``requests``; raises IntegrityError (duplicate key) if another group recorded one of their keys first."""
    keys = sorted({key for request in requests if (key := request.record_key) is not None})
    plan = NumberingPlan(requests, await _recorded(cursor, keys, now) if keys else {})
    last_numbers = await _add_to_counters(cursor, plan.counts) if plan.counts else {}
    answers, records = plan.finish(last_numbers)
    overshoot = plan.overshoot(last_numbers)
    if overshoot:  # only a group that met a ceiling: the counter rows are still ours
        await _set_counters(cursor, overshoot)
    if records:
        await _record(cursor, records, now, key_ttl_seconds)
    return answers


async def _recorded(cursor: aiomysql.Cursor, keys: list[str], now: float) -> dict[str, Record]:
    """The live records of ``keys``; expired ones are deleted, so that the keys can be recorded anew."""
    marks = ", ".join(["%s"] * len(keys))
    await cursor.execute(
        f"SELECT idempotency_key, number, fingerprint, expires_at FROM idempotency_keys"
        f" WHERE idempotency_key IN ({marks})",
        keys,
    )
    live: dict[str, Record] = {}
    expired: list[str] = []
    for key, number, fingerprint, expires_at in await cursor.fetchall():
        if int(expires_at) > milliseconds(now):
            live[_text(key)] = Record(int(number), _text(fingerprint))
        else:
            expired.append(_text(key))
    if expired:
        await cursor.execute(
            f"DELETE FROM idempotency_keys WHERE idempotency_key IN ({', '.join(['%s'] * len(expired))})"
            f" AND expires_at <= %s",
            (*expired, milliseconds(now)),
        )
    return live


async def _add_to_counters(cursor: aiomysql.Cursor, counts: dict[str, int]) -> dict[str, int]:
    scopes = sorted(counts)
    # CASE rather than VALUES(): deprecated on MySQL 8, and its replacement (``AS new``) does
    # not exist on MariaDB. A new scope's row starts at its count: numbers 1 to count.
    upsert = (
        f"INSERT INTO number_counters (scope, last_number) VALUES {', '.join(['(%s, %s)'] * len(scopes))}"
        f" ON DUPLICATE KEY UPDATE last_number = last_number + CASE scope"
        f" {' '.join(['WHEN %s THEN %s'] * len(scopes))} END"
    )
    args = (*(value for scope in scopes for value in (scope, counts[scope])),) * 2
    if returns_rows(cursor):
        # MariaDB answers with the rows as written: one round trip fewer on every group (about
        # 2.5% of an api process's CPU under load, measured with py-spy).
        await cursor.execute(upsert + " RETURNING scope, last_number", args)
    else:
        await cursor.execute(upsert, args)
        await cursor.execute(
            f"SELECT scope, last_number FROM number_counters WHERE scope IN ({', '.join(['%s'] * len(scopes))})",
            scopes,
        )
    return {_text(row[0]): int(row[1]) for row in await cursor.fetchall()}


def returns_rows(cursor: aiomysql.Cursor) -> bool:
    """Whether the server answers ``INSERT ... RETURNING`` (MariaDB 10.5 and later; MySQL does not)."""
    return "MariaDB" in (cursor.connection.get_server_info() or "")


async def _set_counters(cursor: aiomysql.Cursor, values: dict[str, int]) -> None:
    await cursor.executemany(
        "UPDATE number_counters SET last_number = %s WHERE scope = %s",
        [(last, scope) for scope, last in sorted(values.items())],
    )


async def _record(cursor: aiomysql.Cursor, records: dict[str, Record], now: float, key_ttl_seconds: float) -> None:
    # A plain INSERT: a key another group recorded after our read makes it fail on the
    # duplicate, and the caller runs the group again (it then replays that record).
    expires = milliseconds(now + key_ttl_seconds)
    keys = sorted(records)
    await cursor.execute(
        f"INSERT INTO idempotency_keys (idempotency_key, number, fingerprint, expires_at)"
        f" VALUES {', '.join(['(%s, %s, %s, %s)'] * len(keys))}",
        [v for key in keys for v in (key, records[key].number, records[key].fingerprint, expires)],
    )


def _text(value: bytes | str) -> str:
    # Sent as text (aiomysql cannot escape bytes with the PyMySQL we have), read back as bytes.
    return value.decode() if isinstance(value, bytes | bytearray) else value
