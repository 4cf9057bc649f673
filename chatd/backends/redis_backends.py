"""Cache and lock on Redis (redis.asyncio), sharing one client per process.

Every key lives under the connection's prefix and a per-port namespace
(``<prefix>counter:``, ``<prefix>cache:``, ``<prefix>lock:``), so several deployments or
test runs can share a server and ``destroy()`` can remove exactly what one of them made.

The read-modify-write operations are Lua scripts, so each is atomic on the server and
costs one round trip. redis-py sends them with EVALSHA and falls back to loading them
again when the server answers NOSCRIPT (after SCRIPT FLUSH or a restart).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import BusyLoadingError, MasterDownError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatd.backends.lifecycle import Lifecycle
from chatd.errors import BackendUnavailable

T = TypeVar("T")

# Errors that mean "the server cannot do this right now", not "this request is wrong", and the
# cause each is reported as; the first class that matches wins (BusyLoadingError is a
# ConnectionError). OSError covers socket errors redis-py lets through and asyncio's TimeoutError.
_UNAVAILABLE: tuple[tuple[type[BaseException], str], ...] = (
    (BusyLoadingError, "loading"),
    (RedisTimeoutError, "timeout"),
    (TimeoutError, "timeout"),
    (RedisConnectionError, "connection"),  # MaxClientsReachedError and AuthenticationError too
    (OSError, "connection"),
    (ReadOnlyError, "read_only"),  # a replica: after a failover, chatd still points at the old primary
    (OutOfMemoryError, "oom"),  # maxmemory reached under noeviction
    (MasterDownError, "master_down"),  # a replica that lost its primary, replica-serve-stale-data no
)
# Error replies redis-py raises as a plain ResponseError, by their code (the reply's first word,
# ``status_code``): MISCONF (an RDB snapshot failed: writes refused, a full disk say), NOREPLICAS
# (min-replicas-to-write not met), BUSY (a script or function running past its time limit),
# TRYAGAIN and CLUSTERDOWN (a cluster resharding or down).
_UNAVAILABLE_REPLIES = {
    "MISCONF": "misconfigured_persistence",
    "NOREPLICAS": "no_replicas",
    "BUSY": "busy",
    "TRYAGAIN": "busy",
    "CLUSTERDOWN": "cluster_down",
    "LOADING": "loading",
    "READONLY": "read_only",
    "OOM": "oom",
    "MASTERDOWN": "master_down",
}


def outage_of(exc: BaseException) -> BackendUnavailable | None:
    """The BackendUnavailable a redis-py error means, or None if the request itself is wrong."""
    cause = next((cause for kind, cause in _UNAVAILABLE if isinstance(exc, kind)), None)
    if cause is None and isinstance(exc, ResponseError):
        cause = _UNAVAILABLE_REPLIES.get(_reply_code(exc))
    if cause is None:
        return None
    return BackendUnavailable(f"redis {cause}: {type(exc).__name__}: {exc}", backend="redis", cause=cause)


def _reply_code(exc: ResponseError) -> str:
    """The code of an error reply ("MISCONF ..." -> MISCONF), however redis-py passed it on.

    redis-py (8.x) keeps it in ``status_code``; a pipeline's error has "Command # 2 (...) of
    pipeline caused error: " before the reply; a script's error reply is the command's.
    """
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    text = str(exc.args[0]) if exc.args else ""
    _, _, reply = text.rpartition("caused error: ")
    return reply.split(" ", 1)[0]


# Client defaults; options in the URL's query string (``?socket_timeout=1``) override them.
_CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 3.0,
    # PING a pooled connection idle this long before using it, so one that died while idle
    # (server restart, NAT timeout) is replaced instead of failing a request.
    "health_check_interval": 30,
    # Bounded pool: a burst of requests waits for a free connection for up to ``timeout``
    # seconds instead of opening a socket each.
    "max_connections": 64,
    "timeout": 2.0,
}
_RETRIES = 2
_DESTROY_BATCH = 500


def _make_client(url: str) -> aioredis.Redis:
    # Retry connection errors only (a stale pooled socket, a server restarting): retrying
    # a timeout would resend a command the server may have run, against a server already
    # too slow. Jittered backoff, capped, so a dead server fails a request within ~0.5 s.
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), _RETRIES, supported_errors=(RedisConnectionError,))
    options = {**_CLIENT_DEFAULTS, "retry": retry, "decode_responses": False, "client_name": "chatd"}
    if is_sentinel_url(url):
        return sentinel_client(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    return aioredis.Redis.from_pool(pool)


SENTINEL_SCHEME = "redis+sentinel://"


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """``redis+sentinel://host:port[,host:port...]/<service name>[/<db>]``: (sentinels, service, db).

    A sentinel without a port is on 26379 (Sentinel's default); the database is 0 unless given.
    """
    if not is_sentinel_url(url):
        raise ValueError(f"not a redis+sentinel:// URL: {url!r}")
    rest = url[len(SENTINEL_SCHEME) :]
    hosts, _, path = rest.partition("/")
    parts = [part for part in path.split("/") if part]
    if not hosts or not 1 <= len(parts) <= 2:
        raise ValueError(f"expected redis+sentinel://host:port[,host:port...]/<service name>[/<db>], got {url!r}")
    sentinels: list[tuple[str, int]] = []
    for host in hosts.split(","):
        name, colon, port = host.strip().rpartition(":")
        if not colon:
            name, port = host.strip(), "26379"
        if not name or not port.isdigit():
            raise ValueError(f"bad sentinel address {host!r} in {url!r}")
        sentinels.append((name.strip("[]"), int(port)))
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"bad database number {parts[1]!r} in {url!r}")
    return sentinels, parts[0], int(parts[1]) if len(parts) == 2 else 0


def sentinel_client(url: str, **options: Any) -> aioredis.Redis:
    """A client of the primary the sentinels name for the URL's service.

    ``master_for``'s pool asks the sentinels for the primary's address whenever it opens a
    connection, and drops its connections when the address changed: after a failover the
    next request reaches the promoted replica. Until the sentinels name one, requests fail
    with MasterNotFoundError (a ConnectionError: BackendUnavailable).
    """
    sentinels, service, db = parse_sentinel_url(url)
    options = {key: value for key, value in options.items() if key != "timeout"}  # BlockingConnectionPool's only
    sentinel_options = {
        "socket_connect_timeout": options.get("socket_connect_timeout", 2.0),
        "socket_timeout": options.get("socket_timeout", 3.0),
    }
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_options)
    return cast("aioredis.Redis", manager.master_for(service, db=db, **options))


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _milliseconds(seconds: float) -> int:
    # PX rejects 0; a positive TTL under a millisecond still means "expire almost at once".
    return max(1, math.ceil(seconds * 1000))


class RedisConnection(Lifecycle):
    """One redis.asyncio client, shared by the Redis adapters of a process.

    Whoever makes the connection opens and closes it (the registry, before and after the
    ports that use it: ``Backends.connections``); the ports only borrow it. Connections are
    made on demand, so opening succeeds while Redis is down; requests then fail with
    BackendUnavailable and ``/readyz`` reports it until Redis is back.
    """

    def __init__(self, url: str, prefix: str = "chatd:"):
        if not prefix:
            raise ValueError("a Redis key prefix is required (destroy() deletes everything under it)")
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    async def open(self) -> None:
        if self._client is None:
            self._client = _make_client(self.url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._scripts.clear()
            await client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisConnection is not open")
        return self._client

    def key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}{namespace}{key}"

    def script(self, source: str) -> AsyncScript:
        """The script registered on the current client (registering is local: no round trip)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    async def run(self, command: Awaitable[T]) -> T:
        """Await a client call, reporting a server that cannot answer now as BackendUnavailable.

        Unreachable, timed out, loading its data set, a read-only replica, out of memory, a
        failed snapshot refusing writes, too few replicas, a script running long: see ``outage_of``.
        """
        try:
            return await command
        except (RedisConnectionError, RedisTimeoutError, ResponseError, OSError) as exc:
            if (outage := outage_of(exc)) is not None:
                raise outage from exc
            raise

    async def ping(self) -> None:
        await self.run(self.client.ping())

    async def destroy(self, namespace: str = "") -> None:
        """Delete every key under the prefix (and ``namespace``), in batches; works closed too."""
        pattern = _glob_escape(self.prefix + namespace) + "*"
        async with self._maintenance_client() as client:
            await self.run(self._delete_matching(client, pattern))

    @staticmethod
    async def _delete_matching(client: aioredis.Redis, pattern: str) -> None:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=_DESTROY_BATCH):
            batch.append(key)
            if len(batch) >= _DESTROY_BATCH:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)

    @asynccontextmanager
    async def _maintenance_client(self) -> AsyncIterator[aioredis.Redis]:
        # Tests tear down after the app closed its backends: borrow a client if none is open.
        if self._client is not None:
            yield self._client
            return
        client = _make_client(self.url)
        try:
            yield client
        finally:
            await client.aclose()


class _RedisPort(Lifecycle):
    """What the three ports share: a connection they borrow (opening and closing one changes nothing)."""

    name = "redis"
    namespace = ""

    def __init__(self, connection: RedisConnection):
        self.connection = connection

    async def ping(self) -> None:
        await self.connection.ping()

    async def destroy(self) -> None:
        """Delete every key this port made under the connection's prefix."""
        await self.connection.destroy(self.namespace)

    def _key(self, key: str) -> str:
        return self.connection.key(self.namespace, key)


class RedisCache(_RedisPort):
    """Values with a TTL (millisecond precision)."""

    name = "redis-cache"
    namespace = "cache:"

    async def get(self, key: str) -> bytes | None:
        value = await self.connection.run(self.connection.client.get(self._key(key)))
        # decode_responses=False: the client hands back the stored bytes, never str.
        return cast("bytes | None", value)

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        await self.connection.run(self.connection.client.set(self._key(key), value, px=_milliseconds(ttl_seconds)))

    async def delete(self, key: str) -> None:
        await self.connection.run(self.connection.client.delete(self._key(key)))

    async def clear(self) -> None:
        await self.destroy()


# Take a free lease, or extend one this owner already holds; in one script, so a retried
# acquire by the same owner still succeeds.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

# Compare-and-delete: an owner whose lease expired and was taken must not free the new one.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLock(_RedisPort):
    """Leases as keys holding the owner, expiring after their TTL unless extended."""

    name = "redis-lock"
    namespace = "lock:"

    async def acquire(self, name: str, owner: str, ttl_seconds: float) -> bool:
        taken = await self.connection.run(
            self.connection.script(_ACQUIRE)(keys=[self._key(name)], args=[owner, _milliseconds(ttl_seconds)])
        )
        return bool(taken)

    async def release(self, name: str, owner: str) -> None:
        await self.connection.run(self.connection.script(_RELEASE)(keys=[self._key(name)], args=[owner]))
