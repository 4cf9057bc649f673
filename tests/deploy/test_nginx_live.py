"""deploy/nginx.conf passes live events: unbuffered SSE, WebSocket upgrades, idle streams kept open, a limit
of streams per client address.

Run through the real nginx binary in front of a real chatd app, on both backend sets, over HTTPS
(the certificate verified).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from chatd import keys
from tests.conftest import Api
from tests.deploy.helpers import Directive, Gateway, server_block
from tests.deploy.test_nginx import select_location
from tests.factories import eventually
from tests.live.helpers import SseStream, WsStream

EVENT_PATHS = ["/applications/tok/chats/7/events", "/applications/tok/events"]


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[unit]


def test_events_location_is_unbuffered_with_a_long_read_timeout(nginx: Directive) -> None:
    server = server_block(nginx)
    for path in EVENT_PATHS:
        location = select_location(server, path)
        settings = {d.name: d.args for d in location.block or []}
        assert settings.get("proxy_buffering") == ["off"], path
        # Far above chatd's keep-alive interval (15 s), so an idle stream is never cut.
        assert seconds(settings["proxy_read_timeout"][0]) >= 300, path
    headers = {d.args[0].lower(): d.args[1] for d in server.find("proxy_set_header")}
    assert headers["upgrade"] == "$http_upgrade" and headers["connection"].startswith("$")
    # The chat endpoints still take their own location.
    assert select_location(server, "/applications/tok/chats/7/messages").args[1].endswith("chats(/|$)")


async def test_live_events_through_nginx(make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(live_keepalive_seconds=0.2)
    with Gateway(tmp_path, api.client.server.port) as gateway:
        token = await api.create_application()
        chat = await api.create_chat(token)
        path = f"/applications/{token}/chats/{chat}/events"
        async with gateway.session() as session:
            async with session.get(path) as response:
                assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
                stream = SseStream(response)
                websocket = await session.ws_connect(path)
                await api.create_message(token, chat, "through the gateway")
                await api.settle()
                # Each event arrives while the stream is open: nginx does not hold it back.
                assert (await stream.next()).data["content"] == "through the gateway"
                assert (await WsStream(websocket).next()).data["content"] == "through the gateway"
                # Keep-alive comments pass too (nginx would drop an idle stream at its read timeout).
                async with asyncio.timeout(30):
                    while "keep-alive" not in stream.comments:
                        await api.create_message(token, chat, "more")
                        await api.settle()
                        await stream.next()
                await websocket.close()
            # Errors before the stream are chatd's JSON, through nginx too.
            async with session.get("/applications/nope/chats/1/events") as missing:
                assert missing.status == 404
                assert (await missing.json())["error"]["code"] == "application_not_found"


def hang_up(response: aiohttp.ClientResponse) -> None:
    """Close a stream's connection at once, as a browser closing a tab does.

    ``response.close()`` alone would not do over TLS: Python's asyncio sends close_notify and
    keeps the TCP connection open until the peer answers one (up to 30 s), and nginx, which
    does not read from a client while it streams a response, sees the client go only when
    the TCP connection ends.
    """
    assert response.connection is not None and response.connection.protocol is not None
    response.connection.protocol.abort()
    response.close()


# What the README promises: concurrent live streams per client address through the gateway.
STREAMS_PER_ADDRESS = 20


async def test_live_streams_per_client_address_are_limited(make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(live_keepalive_seconds=3600.0)
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.settle()
    paths = [f"/applications/{token}/chats/{chat}/events", f"/applications/{token}/events"]
    limit = STREAMS_PER_ADDRESS
    hub = api.app[keys.HUB]
    with Gateway(tmp_path, api.client.server.port) as gateway:
        async with gateway.session(limit=0) as session:
            # Both events paths count against one limit per address.
            streams = [await session.get(paths[i % 2]) for i in range(limit)]
            assert [s.status for s in streams] == [200] * limit
            await eventually(lambda: asyncio.sleep(0, hub.subscriber_count == limit))
            for path in paths:
                async with session.get(path) as refused:
                    assert refused.status == 429, f"stream {limit + 1} from one address: {refused.status}"
                    assert (await refused.json())["error"]["code"] == "rate_limited"
                    assert refused.headers["Retry-After"] == "1"
            # Other requests from the same address are not streams: not limited by it.
            async with session.get(f"/applications/{token}/chats/{chat}") as chat_answer:
                assert chat_answer.status == 200
            assert hub.subscriber_count == limit  # the refused ones never reached chatd
            hang_up(streams.pop())  # one stream ends: its slot frees

            async def another_opens() -> bool:
                response = await session.get(paths[0])
                if response.status == 200:
                    streams.append(response)
                    return True
                response.close()
                return False

            await eventually(another_opens, timeout=15)
            for stream in streams:
                stream.close()
