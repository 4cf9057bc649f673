"""deploy/nginx.conf passes live events: unbuffered SSE, WebSocket upgrades, idle streams kept open.

Run through the real nginx binary in front of a real chatd app, on both backend sets.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from pathlib import Path

import aiohttp

from tests.conftest import Api
from tests.deploy.helpers import Directive, server_block
from tests.deploy.test_nginx import local_nginx_conf, nginx_command, select_location
from tests.live.helpers import SseStream, WsStream
from tests.servers import free_port

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


def start_nginx(tmp_path: Path, listen: int, upstream: int) -> subprocess.Popen[bytes]:
    conf = local_nginx_conf(tmp_path, listen, upstream)
    log = open(tmp_path / "stderr.log", "wb")
    process = subprocess.Popen([*nginx_command(conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    deadline = time.monotonic() + 10
    while True:
        assert process.poll() is None, (tmp_path / "stderr.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
            return process
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)


async def test_live_events_through_nginx(make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(live_keepalive_seconds=0.2)
    listen = free_port()
    nginx = start_nginx(tmp_path, listen, api.client.server.port)
    try:
        token = await api.create_application()
        chat = await api.create_chat(token)
        path = f"/applications/{token}/chats/{chat}/events"
        async with aiohttp.ClientSession(f"http://127.0.0.1:{listen}") as session:
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
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
