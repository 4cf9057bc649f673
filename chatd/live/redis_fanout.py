"""The fan-out on Redis pub/sub: one channel per deployment, every api process subscribed.

Why Redis pub/sub rather than a RabbitMQ fanout exchange: an announcement is worth nothing
once a process has missed it (the feeds read the store for what they missed), so there is
nothing for a broker to keep; PUBLISH costs Redis microseconds and one round trip, where a
RabbitMQ message costs about 0.13 ms of broker CPU (README, Performance) and an exclusive
queue per api process to declare and clean up. Redis is already every api process's
cache, so the fan-out adds no server to the set.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatd.backends.redis_backends import is_sentinel_url, sentinel_client
from chatd.live.cancelling import cancel_requested
from chatd.live.fanout import Deliver, QueuedFanout, Resync

logger = logging.getLogger(__name__)

_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 3.0,
    "health_check_interval": 10,
    "client_name": "chatd-live",
}
_MAX_BACKOFF = 5.0


def _client_for(url: str) -> aioredis.Redis:
    # A redis+sentinel:// URL: the primary the sentinels name, followed through a failover.
    if is_sentinel_url(url):
        return sentinel_client(url, **_CLIENT_OPTIONS)
    return aioredis.Redis.from_url(url, **_CLIENT_OPTIONS)


class RedisFanout(QueuedFanout):
    """Announcements published on one Redis channel."""

    def __init__(self, url: str, channel: str):
        super().__init__()
        self.url = url
        self.channel = channel
        self._client: aioredis.Redis | None = None

    async def open(self) -> None:
        self._client = _client_for(self.url)
        await super().open()

    async def close(self) -> None:
        await super().close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(self, body: bytes) -> None:
        assert self._client is not None
        await self._client.publish(self.channel, body)

    async def listen(self, deliver: Deliver, resync: Resync) -> None:
        backoff = 0.1
        while True:
            client = _client_for(self.url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                resync()  # whatever was announced while not subscribed is in the store
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if cancel_requested():  # redis-py may answer a cancel as "no message" (cancelling.py)
                        raise asyncio.CancelledError
                    if message is not None and message.get("type") == "message":
                        deliver(message["data"])
            except (RedisError, OSError) as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from None
                logger.warning("live fan-out lost Redis (%s); reconnecting in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            finally:
                await pubsub.aclose()
                await client.aclose()
