"""WebSocket heartbeats (``CHATD_WEBSOCKET_HEARTBEAT_SECONDS``): a peer that stops answering
pings is closed within about two heartbeats; one that answers stays open as long as it likes.

Both clients turn aiohttp's automatic pong off, so the test sees every ping and decides whether
it is answered. The keep-alive poll is off (an hour), so every ping here is a heartbeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from prometheus_client import REGISTRY

from tests.conftest import Api
from tests.factories import eventually


@pytest.fixture
def backend_set() -> str:
    """Heartbeats belong to the HTTP layer: the embedded set is enough."""
    return "embedded"


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


def open_websockets() -> float:
    return REGISTRY.get_sample_value("chatd_live_connections", {"transport": "websocket"}) or 0.0


async def _chat(make_api, heartbeat: float) -> tuple[Api, str, int]:  # type: ignore[no-untyped-def]
    api: Api = await make_api(websocket_heartbeat_seconds=heartbeat, live_keepalive_seconds=3600.0)
    token = await api.create_application()
    return api, token, await api.create_chat(token)


async def test_a_peer_that_never_answers_pings_is_closed_within_two_heartbeats(make_api) -> None:  # type: ignore[no-untyped-def]
    heartbeat = 1.0
    api, token, chat = await _chat(make_api, heartbeat)
    before = open_websockets()
    loop = asyncio.get_running_loop()
    websocket = await api.client.ws_connect(f"/applications/{token}/chats/{chat}/events", autoping=False)
    opened = loop.time()
    pings = 0
    # The deadline is far past two heartbeats: without a heartbeat the stream never ends.
    async with asyncio.timeout(10 * heartbeat):
        while True:
            message = await websocket.receive()
            if message.type != aiohttp.WSMsgType.PING:
                break
            pings += 1  # and never answered
    closed_after = loop.time() - opened
    assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR), message
    assert pings >= 1, "closed without a ping first"
    assert heartbeat <= closed_after <= 2 * heartbeat + 0.5, closed_after
    # The server let go of the stream too (its subscriber and the connection gauge).
    await eventually(_async(lambda: open_websockets() <= before), timeout=5)


async def test_a_peer_that_answers_pings_stays_open_across_heartbeats(make_api) -> None:  # type: ignore[no-untyped-def]
    heartbeat = 0.5
    api, token, chat = await _chat(make_api, heartbeat)
    websocket = await api.client.ws_connect(f"/applications/{token}/chats/{chat}/events?after=0", autoping=False)
    pings = 0
    async with asyncio.timeout(20 * heartbeat):
        while pings < 4:
            message = await websocket.receive()
            assert message.type == aiohttp.WSMsgType.PING, message  # nothing else: not closed
            pings += 1
            await websocket.pong(message.data)
    # Still open, and still streaming: a message posted now arrives (pings answered meanwhile).
    await api.create_message(token, chat, "still here")
    await api.settle()
    async with asyncio.timeout(10):
        message = await websocket.receive()
        while message.type == aiohttp.WSMsgType.PING:
            await websocket.pong(message.data)
            message = await websocket.receive()
    assert message.type == aiohttp.WSMsgType.TEXT, message
    frame = orjson.loads(message.data)
    assert frame["event"] == "message.created" and frame["data"]["content"] == "still here"
    await websocket.close()
