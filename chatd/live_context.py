"""The live side of a process, as an aiohttp cleanup context.

Every process opens the fan-out (its store announces through it). An api process also keeps a
``Hub`` for its subscribers, listens to the fan-out, and pings and polls its feeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from chatd import keys
from chatd.live.cancelling import cancel_all, cancel_requested
from chatd.live.hub import Hub, LiveOptions
from chatd.live.subscriber import SHUTTING_DOWN
from chatd.live.token_watch import TokenWatch

logger = logging.getLogger(__name__)


def live_context(*, serve: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    """The fan-out for every role; with ``serve``, the hub and its loops too."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        fanout = app[keys.FANOUT]
        await fanout.open()
        tasks: list[asyncio.Task[None]] = []
        hub: Hub | None = None
        if serve:
            options = LiveOptions(
                buffer_events=settings.live_buffer_events,
                keepalive_seconds=settings.live_keepalive_seconds,
                hole_wait_seconds=settings.live_hole_wait_seconds,
                edit_replay_seconds=settings.live_edit_replay_seconds,
                edit_replay_events=settings.live_edit_replay_events,
                settled_age_seconds=settings.live_late_seconds,
            )
            hub = app[keys.HUB] = Hub(app[keys.BACKENDS].store, options)
            watch = app[keys.TOKEN_WATCH] = TokenWatch(app[keys.SERVICE].token_works)
            tasks.append(_keep_running("live-listener", lambda: fanout.listen(hub.deliver, hub.resync)))
            tasks.append(_keep_running("live-keepalive", hub.keep_alive))
            tasks.append(_keep_running("live-token-watch", watch.run))
        try:
            yield
        finally:
            await cancel_all(tasks)
            if hub is not None:
                await hub.stop()
            await fanout.close()

    return context


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every live stream, so the server does not wait on them to stop."""
    hub = app.get(keys.HUB)
    if hub is not None:
        hub.close_all(SHUTTING_DOWN)


def _keep_running(name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
    async def run() -> None:
        while True:
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception:
                if cancel_requested():
                    raise asyncio.CancelledError from None  # a cancel a library turned into an error
                logger.exception("%s crashed; restarting in 1 s", name)
                await asyncio.sleep(1.0)

    return asyncio.create_task(run(), name=name)
