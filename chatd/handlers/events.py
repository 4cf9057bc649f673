"""Live events of a chat (and of an application's chats) as Server-Sent Events or a WebSocket.

``GET /applications/{token}/chats/{chat}/events`` streams ``message.created`` and
``message.updated``; ``GET /applications/{token}/events`` streams ``chat.created``. The same
path answers a WebSocket upgrade. A stream resumes after ``Last-Event-ID`` or ``?after=``
(a number): the stored records after it come first, then live ones, each number once, in
order. Without either, it starts after the last number handed out when it connects.

The 404s (unknown application or chat) and 400s are answered before the stream starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping

import orjson
from aiohttp import WSMsgType, web

from chatd import keys, metrics
from chatd.handlers import headers, parsing
from chatd.handlers.middleware import lift_deadline
from chatd.limits import policies
from chatd.live.events import APPLICATION_FEED, MESSAGE_UPDATED, LiveEvent
from chatd.live.feed import Feed
from chatd.live.subscriber import SHUTTING_DOWN, SLOW_CONSUMER, STREAM_ENDED, TOKEN_REVOKED, Subscriber
from chatd.live.write_deadline import WriteDeadline

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

# Events written per write call: large enough to batch a burst, small enough to interleave.
_EVENTS_PER_WRITE = 100
# SSE reconnection delay the browser uses after a stream ends (milliseconds).
_RETRY_MS = 1000
_CLOSE_MESSAGES = {
    SLOW_CONSUMER: "the client fell too far behind; resume from the last event id",
    SHUTTING_DOWN: "the server is shutting down; resume from the last event id",
    STREAM_ENDED: "the stream reached its time limit; resume from the last event id",
    TOKEN_REVOKED: "the token this stream was opened with no longer works; resume with the current token",
}
# WebSocket close codes: 1000 normal, 1001 going away; 4000-4999 are for applications (4001:
# as HTTP's 401, the credential stopped working).
_WS_CLOSE_CODES = {SLOW_CONSUMER: 4008, SHUTTING_DOWN: 1001, STREAM_ENDED: 1000, TOKEN_REVOKED: 4001}


@routes.get("/applications/{token}/chats/{chat}/events")
async def chat_events(request: web.Request) -> web.StreamResponse:
    chat = parsing.path_number(request, "chat")
    return await _stream(request, chat)


@routes.get("/applications/{token}/events")
async def application_events(request: web.Request) -> web.StreamResponse:
    return await _stream(request, None)


def resume_point(request: web.Request) -> int | None:
    """The number to resume after: ``Last-Event-ID`` (as browsers send it), else ``?after=``.

    Both are parsed as every other number is (``parsing.number_from``); an empty one is none.
    """
    header = request.headers.get("Last-Event-ID")
    if header:
        return parsing.number_from(header, "Last-Event-ID")
    raw = request.query.get("after")
    return parsing.number_from(raw, "after") if raw else None


async def _stream(request: web.Request, chat: int | None) -> web.StreamResponse:
    after = resume_point(request)
    app, head = await request.app[keys.SERVICE].live_head(request.match_info["token"], chat)
    # One of the application's live-stream slots for the stream's life (429 when all are taken).
    async with _stream_slot(request, app.id):
        return await _serve(request, chat, after, app.id, head)


@contextlib.asynccontextmanager
async def _stream_slot(request: web.Request, application_id: int) -> AsyncIterator[None]:
    limiter = request.app[keys.SERVICE].limiter
    if limiter is None:
        yield
        return
    async with limiter.stream(application_id):
        yield


def _rate_fields(fields: MutableMapping[str, str]) -> None:
    """The stream's RateLimit fields: its headers go out before the middleware sees it."""
    verdict = policies.current.get()
    if verdict is not None:
        fields.update(verdict.headers())


async def _serve(
    request: web.Request, chat: int | None, after: int | None, app_id: int, head: int
) -> web.StreamResponse:
    hub = request.app[keys.HUB]
    lift_deadline(request)  # the checks above were answered in time; a stream lasts
    settings = request.app[keys.SETTINGS]
    heartbeat = settings.websocket_heartbeat_seconds
    # A ping every ``heartbeat`` seconds without other traffic from the client; no pong within
    # half of it closes the connection, so a peer that vanished does not hold it until TCP gives up.
    websocket = web.WebSocketResponse(compress=False, max_msg_size=4096, heartbeat=heartbeat or None)
    start = head if after is None else after
    if websocket.can_prepare(request).ok:
        headers.apply(websocket.headers)  # a stream's headers go out before the middleware sees it
        _rate_fields(websocket.headers)
        await websocket.prepare(request)
        writer: _Writer = _WebSocketWriter(websocket, start)
    else:
        writer = await _SseWriter.start(request, start)
    chat_feed = APPLICATION_FEED if chat is None else chat
    feed, subscriber = hub.subscribe(app_id, chat_feed, start, resumed=after is not None)
    token = request.match_info["token"]
    watch = request.app[keys.TOKEN_WATCH]
    watch.watch(token, subscriber)
    connections = metrics.LIVE_CONNECTIONS.labels("websocket" if isinstance(writer, _WebSocketWriter) else "sse")
    connections.inc()
    # Aborting the transport fails the write that waits on it: the pump ends and releases all.
    deadline = WriteDeadline(settings.live_write_deadline_seconds, _aborter(request), _unsent(request))
    lifetime = None
    if settings.live_stream_seconds:
        lifetime = asyncio.get_running_loop().call_later(settings.live_stream_seconds, subscriber.close, STREAM_ENDED)
    try:
        await _pump(feed, subscriber, writer, deadline)
    finally:
        deadline.finish()
        if lifetime is not None:
            lifetime.cancel()
        connections.dec()
        watch.forget(token, subscriber)
        hub.unsubscribe(feed, subscriber)
    return writer.response


def _aborter(request: web.Request) -> Callable[[], None]:
    transport = request.transport

    def abort() -> None:
        logger.info("live client did not take a write within the deadline; connection closed")
        if transport is not None:
            transport.abort()

    return abort


def _unsent(request: web.Request) -> Callable[[], int]:
    """Bytes written to the connection that its socket has not taken yet (the client is not reading)."""
    transport = request.transport
    return lambda: 0 if transport is None else transport.get_write_buffer_size()


async def _pump(feed: Feed, subscriber: Subscriber, writer: _Writer, deadline: WriteDeadline) -> None:
    """Write the subscriber's events until it is closed, the client goes away or a write misses ``deadline``."""
    reading = asyncio.create_task(writer.wait_closed())
    reading.add_done_callback(lambda _: subscriber.close("client_gone"))
    try:
        while True:
            await subscriber.wake.wait()
            subscriber.wake.clear()
            deadline.writing()
            if subscriber.closed is not None:
                if subscriber.closed != "client_gone":
                    await writer.close(subscriber.closed)  # last words, within the deadline too
                return
            was_full = subscriber.room == 0
            batch = subscriber.take(_EVENTS_PER_WRITE)
            if subscriber.buffer:
                subscriber.wake.set()  # more to write after this batch
            if batch:
                await writer.send(batch)
            if subscriber.ping_due:
                subscriber.ping_due = False
                await writer.ping()
            deadline.written()
            if was_full or subscriber.room >= subscriber.capacity // 2:
                feed.has_room(subscriber)
    except (ConnectionError, RuntimeError):
        return  # the client went away mid-write, or missed the write deadline
    finally:
        reading.cancel()


class _Writer:
    response: web.StreamResponse

    async def send(self, batch: list[LiveEvent]) -> None: ...

    async def ping(self) -> None: ...

    async def close(self, reason: str) -> None: ...

    async def wait_closed(self) -> None:
        """Return when the client has gone (WebSocket: closed; SSE: never, a write notices)."""
        await asyncio.Event().wait()


class _SseWriter(_Writer):
    def __init__(self, response: web.StreamResponse, start: int):
        self.response = response
        # Never empty: by the SSE standard an empty id resets the browser's last event id, and
        # its next reconnect would start from the head. The first event may be an edit.
        self.last_id = str(start)

    @classmethod
    async def start(cls, request: web.Request, start: int) -> _SseWriter:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                # NGINX: pass every event at once instead of buffering the response.
                "X-Accel-Buffering": "no",
            }
        )
        headers.apply(response.headers)  # a stream's headers go out before the middleware sees it
        _rate_fields(response.headers)
        await response.prepare(request)
        await response.write(b"retry: %d\n: connected\n\n" % _RETRY_MS)
        return cls(response, start)

    async def send(self, batch: list[LiveEvent]) -> None:
        parts = []
        for event in batch:
            if event.kind != MESSAGE_UPDATED:
                self.last_id = str(event.number if event.resume_id is None else event.resume_id)
            # An edit keeps the id: the resume point is the last record given, not the edit.
            parts.append(
                b"id: %s\nevent: %s\ndata: %s\n\n" % (self.last_id.encode(), event.kind.encode(), event.data())
            )
        await self.response.write(b"".join(parts))

    async def ping(self) -> None:
        await self.response.write(b": keep-alive\n\n")

    async def close(self, reason: str) -> None:
        body = orjson.dumps({"error": {"code": reason, "message": _CLOSE_MESSAGES.get(reason, reason)}})
        with contextlib.suppress(ConnectionError, RuntimeError):
            # The connection ends with the stream: a client told to go (too slow, shutting down)
            # reconnects anyway, and one that stopped reading must not keep it idle, bytes unsent.
            self.response.force_close()
            await self.response.write(b"event: close\ndata: %s\n\n" % body)
            await self.response.write_eof()


class _WebSocketWriter(_Writer):
    def __init__(self, response: web.WebSocketResponse, start: int):
        self.response = response
        self.websocket = response
        self.last_id = str(start)  # never empty, as for SSE

    async def send(self, batch: list[LiveEvent]) -> None:
        for event in batch:
            if event.kind != MESSAGE_UPDATED:
                self.last_id = str(event.number if event.resume_id is None else event.resume_id)
            frame = b'{"id":"%s","event":"%s","data":%s}' % (self.last_id.encode(), event.kind.encode(), event.data())
            await self.websocket.send_frame(frame, WSMsgType.TEXT)

    async def ping(self) -> None:
        await self.websocket.ping()

    async def close(self, reason: str) -> None:
        message = f"{reason}: {_CLOSE_MESSAGES.get(reason, reason)}"[:120].encode()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.websocket.close(code=_WS_CLOSE_CODES.get(reason, 1011), message=message)

    async def wait_closed(self) -> None:
        # Clients send nothing we use; reading is what notices their close frame.
        async for message in self.websocket:
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.ERROR):
                break
