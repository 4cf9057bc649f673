"""A live client that stops reading is closed with a reason and resumes from its last id; one that never
reads again is let go (subscriber and connection) within the write deadline."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import orjson

from chatd import keys
from chatd.live.subscriber import SLOW_CONSUMER
from tests.conftest import Api
from tests.factories import eventually
from tests.live.helpers import SseStream, numbers

MESSAGES = 60


async def open_stalled_stream(host: str, port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An SSE request from a client with a tiny receive buffer that reads nothing until told."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: it sets the window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def parse(raw: bytes) -> list[tuple[str, str, bytes]]:
    """(id, event, data) of each event in a chunked SSE body read whole (chunk framing removed)."""
    events = []
    for block in raw.split(b"\n\n"):
        fields = dict(
            line.split(b": ", 1) for line in block.split(b"\n") if b": " in line and not line.startswith(b":")
        )
        if b"data" in fields:
            events.append((fields.get(b"id", b"").decode(), fields.get(b"event", b"").decode(), fields[b"data"]))
    return events


async def stall(api: Api) -> tuple[str, str, asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that takes three messages, then stops reading while many more come: (token, path, its socket)."""
    token = await api.create_application()
    chat = await api.create_chat(token)
    path = f"/applications/{token}/chats/{chat}/events"
    reader, writer = await open_stalled_stream(api.client.host, api.client.port, path)
    hub = api.app[keys.HUB]
    await eventually(lambda: asyncio.sleep(0, bool(hub.feeds)))
    # A slow link on the server's side too: otherwise its kernel buffers take megabytes first.
    (stream,) = [h.transport for h in server_connections(api) if h.transport and is_peer(h.transport, writer)]
    stream.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for i in range(MESSAGES):
        await api.create_message(token, chat, f"{i} " + "x" * 9000)
        if i == 2:
            await api.settle()
            await eventually(
                lambda: asyncio.sleep(0, all(s.last == 3 for f in hub.feeds.values() for s in f.subscribers))
            )
    await api.settle()
    return token, path, reader, writer


def server_connections(api: Api) -> list[Any]:
    server = api.client.server.runner.server
    assert server is not None
    return list(server.connections)


def is_peer(transport: asyncio.BaseTransport, client: asyncio.StreamWriter) -> bool:
    """Whether the server's ``transport`` is the connection of ``client``."""
    return bool(transport.get_extra_info("peername") == client.get_extra_info("sockname"))


async def test_a_client_that_stops_reading_is_disconnected_within_the_write_deadline(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(live_buffer_events=5, live_keepalive_seconds=0.2, live_write_deadline_seconds=1.0)
    hub = api.app[keys.HUB]
    _, _, reader, writer = await stall(api)
    stalled_at = time.monotonic()

    def held() -> bool:
        return hub.subscriber_count > 0 or any(
            h.transport and is_peer(h.transport, writer) for h in server_connections(api)
        )

    # The server lets go of everything: the subscriber (and its buffer), the feed, the connection.
    await eventually(lambda: asyncio.sleep(0, not held() and not hub.feeds), timeout=15)
    released_in = time.monotonic() - stalled_at
    # What the client finds when it reads again: what fitted in the socket's buffers, then the end.
    async with asyncio.timeout(30):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
    writer.close()
    assert released_in < 10, f"released {released_in:.1f} s after the last message, with a 1 s deadline"


async def test_a_stalled_live_client_is_closed_and_resumes(make_api) -> None:  # type: ignore[no-untyped-def]
    # A short keep-alive: each one re-examines the stalled client (no new messages are needed for that).
    api = await make_api(live_buffer_events=5, live_keepalive_seconds=0.2)
    hub = api.app[keys.HUB]
    _, path, reader, writer = await stall(api)

    def closed_as_slow() -> bool:
        # Closed, and either still writing its last words to the full socket or gone: the
        # client reads only from here on, so the last words can still be waiting for it.
        return not hub.feeds or any(s.closed == SLOW_CONSUMER for feed in hub.feeds.values() for s in feed.subscribers)

    await eventually(lambda: asyncio.sleep(0, closed_as_slow()))
    async with asyncio.timeout(30):
        raw = b""
        while chunk := await reader.read(65536):  # up to the server closing the connection
            raw += chunk
    assert raw.endswith(b"\r\n0\r\n\r\n")  # the last chunk: the stream ended, then the connection
    # The server let go of the connection itself, not only of the subscriber: no idle keep-alive.
    await eventually(
        lambda: asyncio.sleep(0, not any(h.transport and is_peer(h.transport, writer) for h in server_connections(api)))
    )
    writer.close()
    body = b"".join(line for line in raw.split(b"\r\n") if not all(c in b"0123456789abcdef" for c in line) or not line)
    events = parse(body.replace(b"\r\n", b""))
    given = [int(orjson.loads(data)["number"]) for _, kind, data in events if kind == "message.created"]
    assert given[:3] == [1, 2, 3] and given == list(range(1, len(given) + 1)) and len(given) < MESSAGES
    (closing,) = [orjson.loads(data) for _, kind, data in events if kind == "close"]
    assert closing["error"]["code"] == SLOW_CONSUMER and "resume" in closing["error"]["message"]
    # Its last words taken, the stream is over on the server too: nothing is held for it.
    await eventually(lambda: asyncio.sleep(0, hub.subscriber_count == 0 and not hub.feeds))
    resumed = SseStream(await api.client.get(path, headers={"Last-Event-ID": str(given[-1])}))
    assert numbers(await resumed.take(MESSAGES - len(given))) == list(range(len(given) + 1, MESSAGES + 1))
