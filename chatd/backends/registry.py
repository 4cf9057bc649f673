"""Backends chosen by URL: the scheme picks the class; drivers are imported only when used.

Every embedded file is derived from the store's location unless set explicitly: beside a
SQLite store ``dir/chatd.db`` the search index is ``dir/chatd.search.db``; beside a MySQL
database ``chat`` the files are ``./chat.search.db`` and ``./chat.embedded.db``. The search
index is also tied to its store by the store's identity (``Store.identity``), so a file
left over from another store is rebuilt rather than silently answering for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from chatd.backends.sqlite_cache import SqliteCache, SqliteLock
from chatd.backends.sqlite_db import EpochClock, SqliteDatabase, path_from_url
from chatd.backends.sqlite_limits import SqliteLimitOverrides
from chatd.backends.sqlite_queue import SqliteQueue
from chatd.backends.sqlite_search import SqliteSearchIndex
from chatd.backends.sqlite_store import SqliteStore
from chatd.ports import (
    Backends,
    Cache,
    LimitOverrides,
    Lock,
    Queue,
    RateCounter,
    SearchIndex,
    Store,
    StoreReads,
    StreamCounter,
)
from chatd.settings import Settings


def _derived(settings: Settings, kind: str) -> str:
    """``<store>.<kind>.db`` beside a SQLite store, ``./<database>.<kind>.db`` for MySQL."""
    if settings.database_url.startswith("sqlite://"):
        store = path_from_url(settings.database_url)
        if store == ":memory:":
            return store  # the same in-memory database: nothing outlives the process
        return f"{Path(store).with_suffix('')}.{kind}.db"
    from chatd.backends.mysql_db import MysqlTarget

    return f"./{MysqlTarget.parse(settings.database_url).database}.{kind}.db"


def search_path(settings: Settings) -> str:
    """The embedded search index's SQLite file: ``settings.search_path``, or derived from the store."""
    return settings.search_path or _derived(settings, "search")


def embedded_path(settings: Settings) -> str:
    """The SQLite file of the embedded cache, lock and queue: the store's, if it is SQLite."""
    if settings.database_url.startswith("sqlite://"):
        return path_from_url(settings.database_url)
    return settings.embedded_path or _derived(settings, "embedded")


class _Databases:
    """The SQLite databases of one set of backends: one per file, shared by every backend in it."""

    def __init__(self) -> None:
        self.made: dict[str, SqliteDatabase] = {}

    def __call__(self, path: str) -> SqliteDatabase:
        database = SqliteDatabase(path)
        return self.made.setdefault(database.key, database)


def _make_store(settings: Settings, databases: _Databases) -> Store:
    if settings.database_url.startswith("mysql://"):
        from chatd.backends.mysql_store import MysqlStore

        return MysqlStore(settings.database_url)
    return SqliteStore(databases(path_from_url(settings.database_url)))


def make_backends(settings: Settings, clock: EpochClock = time.time) -> Backends:
    """Unopened backends for ``settings``; open them with ``opened``.

    ``clock`` is what the embedded cache, lock and queue read for expiries and leases
    (the real servers keep their own time). Connections that several backends share (a SQLite
    file, the Redis client) are made once and listed in ``Backends.connections``.
    """
    databases = _Databases()
    embedded = embedded_path(settings)
    store = _make_store(settings, databases)
    cache: Cache
    lock: Lock
    queue: Queue
    search: SearchIndex
    shared: list[AbstractAsyncContextManager[Any]] = []
    rates: RateCounter | None = None
    streams: StreamCounter | None = None
    if settings.redis_url:
        from chatd.backends.redis_backends import RedisCache, RedisConnection, RedisLock
        from chatd.backends.redis_limits import RedisRates, RedisStreams

        connection = RedisConnection(settings.redis_url, prefix=settings.redis_prefix)
        cache, lock = RedisCache(connection), RedisLock(connection)
        rates, streams = RedisRates(connection), RedisStreams(connection)
        shared.append(connection)
    else:
        shared_file = databases(embedded)
        cache, lock = SqliteCache(shared_file, clock), SqliteLock(shared_file, clock)
    if settings.amqp_url:
        from chatd.backends.amqp_queue import AmqpQueue

        queue = AmqpQueue(settings.amqp_url, prefix=settings.amqp_prefix, max_attempts=settings.max_delivery_attempts)
    else:
        queue = SqliteQueue(databases(embedded), clock=clock)
    if settings.elasticsearch_url:
        from chatd.backends.elasticsearch_search import ElasticsearchIndex

        search = ElasticsearchIndex(
            settings.elasticsearch_url,
            index=settings.elasticsearch_index,
            shards=settings.elasticsearch_shards,
            replicas=settings.elasticsearch_replicas,
        )
    else:
        # Opened after the store (Backends.all's order), it asks the store for its identity.
        search = SqliteSearchIndex(databases(search_path(settings)), store.identity)
    reads: StoreReads | None = None
    if settings.database_replica_url:
        from chatd.backends.mysql_store import MysqlStore
        from chatd.backends.replica_reads import ReplicaReads

        replica = MysqlStore(settings.database_replica_url)
        reads = ReplicaReads(store, replica, max_lag=settings.replica_max_lag_seconds)
        shared.append(_opened_for_reads(replica))
    connections = (*databases.made.values(), *shared)
    overrides = _limit_overrides(store)
    return Backends(
        store,
        cache,
        queue,
        search,
        lock,
        connections=connections,
        overrides=overrides,
        rates=rates,
        streams=streams,
        reads=reads,
    )


@asynccontextmanager
async def _opened_for_reads(replica: Any) -> AsyncIterator[None]:
    """The replica's pool, closed with the backends (it is no port: nothing else uses it).

    Opened by ``ReplicaReads`` when it first looks at the replica, and again after a failure: a
    replica that is down when chatd starts only sends the reads to the primary.
    """
    try:
        yield
    finally:
        await replica.close()


def _limit_overrides(store: Store) -> LimitOverrides:
    """The admin's rate-limit overrides, in the store's own database (they must outlive Redis)."""
    if isinstance(store, SqliteStore):
        return SqliteLimitOverrides(store.db)
    from chatd.backends.mysql_limits import MysqlLimitOverrides

    return MysqlLimitOverrides(store.db)  # type: ignore[attr-defined]


@asynccontextmanager
async def opened(backends: Backends) -> AsyncIterator[Backends]:
    """``backends`` open for the block: the shared connections first, then every backend in order.

    All of them are entered on one AsyncExitStack, so they close in reverse order however the
    block ends, and a close that raises does not keep the others open (the error is raised once
    every one was closed). A backend that fails to open closes those opened before it.
    """
    async with AsyncExitStack() as stack:
        for connection in backends.connections:
            await stack.enter_async_context(connection)
        for backend in backends.all():
            await stack.enter_async_context(backend)
        yield backends
