"""SIGTERM with live streams open: each stream is told why it ends, and the process exits 0 at once."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.conftest import Namespace
from tests.live.helpers import SseStream, WsStream
from tests.processes import ChatdProcess, application_and_chat


async def test_sigterm_closes_live_streams_with_a_reason(namespace: Namespace, tmp_path: Path) -> None:
    # A shutdown timeout far above the test's own: exiting must not wait for the streams to time out.
    settings = await namespace.serving_settings(shutdown_timeout_seconds=60.0)
    api = await ChatdProcess(settings, "all", tmp_path).start()
    try:
        async with aiohttp.ClientSession(api.url) as session:
            token, chat = await application_and_chat(session, "Shutdown")
            path = f"/applications/{token}/chats/{chat}/events"
            websocket = WsStream(await session.ws_connect(path))
            async with session.get(path) as response:
                stream = SseStream(response)
                await session.post(f"/applications/{token}/chats/{chat}/messages", json={"content": "before"})
                assert (await stream.next()).data["content"] == "before"
                assert (await websocket.next()).data["content"] == "before"
                assert await api.terminate(timeout=30) == 0
                closing = await stream.next()
                assert closing.event == "close" and closing.data["error"]["code"] == "shutting_down"
            message = await websocket.websocket.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001
            assert websocket.websocket.close_code == 1001 or message.extra.startswith("shutting_down")
    finally:
        api.stop_quietly()
