"""Rate limits counted in Redis, shared by every api process: token buckets and live-stream slots.

Buckets: one key per application and policy (``<prefix>limits:<app>:<policy>``) holding the
bucket's theoretical arrival time in microseconds of Redis's own clock (``TIME``, so api
processes on machines whose clocks differ agree), expiring when the bucket is full again.
The checks that arrive in one turn of the event loop go to Redis together, as one EVALSHA of
one script over all their keys: one round trip per request at most, and fewer under load,
where redis-py's own cost per command would otherwise be paid per request.

Streams: a sorted set per application whose members are this process's open streams, scored
by when their lease ends; a background task renews this process's leases (``refresh``), so the
streams of a process that died stop counting within a lease.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from typing import Any

from chatd.backends.redis_backends import RedisConnection
from chatd.domain import Hit
from chatd.limits.policies import STREAM_LEASE_SECONDS

# The same arithmetic as chatd.limits.gcra.decide, per key, in microseconds. ARGV holds each key's
# interval, capacity and the tokens wanted; the answer is three integers per key: tokens taken
# (0: refused), wait, reset.
_HIT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local capacity = tonumber(ARGV[3 * i - 1])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local room = math.floor((now + capacity - tat) / interval + 0.000001)
  if room < 1 then
    out[#out + 1] = 0
    out[#out + 1] = math.ceil(tat + interval - now - capacity)
    out[#out + 1] = math.floor(tat - now)
  else
    local taken = math.min(tonumber(ARGV[3 * i]), room)
    local new_tat = tat + taken * interval
    redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
    out[#out + 1] = taken
    out[#out + 1] = 0
    out[#out + 1] = math.floor(new_tat - now)
  end
end
return out
"""

# Drop the expired leases, then take one if fewer than the limit are held: (taken, held now).
_ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then
  return {0, held}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, held + 1}
"""

# Renew leases still held (XX: one released meanwhile is not brought back).
_RENEW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]))
end
return #KEYS
"""

_MICROS = 1_000_000
# Checks sent in one script call at most (a flood's turn of the loop may hold thousands).
MAX_BATCH = 256
# A check Redis has not answered by then fails (TimeoutError), one timer per batch: the limiter
# then counts locally for a while. A limit must never be what makes a request slow.
TIMEOUT_SECONDS = 0.5


class RedisRates:
    """Token buckets in Redis (``RateCounter``), the checks of one loop turn sent as one script call."""

    name = "redis-limits"
    namespace = "limits:"

    def __init__(self, connection: RedisConnection, timeout: float = TIMEOUT_SECONDS):
        self.connection = connection
        self.timeout = timeout
        self._pending: list[tuple[str, str, str, int, asyncio.Future[Hit]]] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()  # strong references while they run

    def _key(self, key: str) -> str:
        return self.connection.key(self.namespace, key)

    async def hit(self, key: str, interval: float, capacity: float, want: int = 1) -> Hit:
        future: asyncio.Future[Hit] = asyncio.get_running_loop().create_future()
        micros = (f"{interval * _MICROS:.3f}", f"{capacity * _MICROS:.3f}")
        self._pending.append((self._key(key), *micros, want, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            task = asyncio.ensure_future(self._send(pending[start : start + MAX_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: Sequence[tuple[str, str, str, int, asyncio.Future[Hit]]]) -> None:
        keys = [key for key, _, _, _, _ in batch]
        args: list[str | int] = list(itertools.chain.from_iterable((i, c, w) for _, i, c, w, _ in batch))
        try:
            async with asyncio.timeout(self.timeout):
                answer: list[Any] = await self.connection.run(self.connection.script(_HIT)(keys=keys, args=args))
        except BaseException as exc:  # every waiter learns it, a cancellation too
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for index, (*_, future) in enumerate(batch):
            taken, wait, reset = answer[3 * index : 3 * index + 3]
            if not future.done():
                future.set_result(Hit(taken > 0, int(wait) / _MICROS, int(reset) / _MICROS, int(taken)))

    async def destroy(self) -> None:
        await self.connection.destroy(self.namespace)


class RedisStreams:
    """Live-stream slots in Redis (``StreamCounter``): leases this process renews while they are open."""

    name = "redis-streams"
    namespace = "streams:"

    def __init__(self, connection: RedisConnection, lease_seconds: float = STREAM_LEASE_SECONDS):
        self.connection = connection
        self.lease_ms = int(lease_seconds * 1000)
        # Members are unique to this process: its pid and a random part, then a counter.
        self.process = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._held: dict[tuple[str, str], None] = {}

    def _key(self, key: str) -> str:
        return self.connection.key(self.namespace, key)

    async def acquire(self, key: str, member: str, limit: int) -> tuple[bool, int]:
        name = f"{self.process}:{member}"
        script = self.connection.script(_ACQUIRE)
        taken, held = await self.connection.run(script(keys=[self._key(key)], args=[limit, name, self.lease_ms]))
        if taken:
            self._held[(key, name)] = None
        return bool(taken), int(held)

    async def release(self, key: str, member: str) -> None:
        name = f"{self.process}:{member}"
        self._held.pop((key, name), None)
        await self.connection.run(self.connection.client.zrem(self._key(key), name))

    async def refresh(self) -> None:
        held = list(self._held)
        for start in range(0, len(held), MAX_BATCH):
            batch = held[start : start + MAX_BATCH]
            keys = [self._key(key) for key, _ in batch]
            args: list[str | int] = [self.lease_ms, *(name for _, name in batch)]
            await self.connection.run(self.connection.script(_RENEW)(keys=keys, args=args))

    async def destroy(self) -> None:
        await self.connection.destroy(self.namespace)
