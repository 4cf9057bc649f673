"""Clients of the live events endpoints for tests: an SSE reader and a WebSocket reader."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass
class Event:
    id: str
    event: str
    data: dict[str, Any]


class SseStream:
    """Reads ``text/event-stream`` from an open response, one event at a time (comments skipped)."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response
        self.comments: list[str] = []
        self.last_id = ""

    async def next(self, timeout: float = 30.0) -> Event:
        async with asyncio.timeout(timeout):
            fields: dict[str, str] = {}
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if "data" in fields:
                        self.last_id = fields.get("id", self.last_id)
                        return Event(self.last_id, fields.get("event", "message"), orjson.loads(fields["data"]))
                    fields = {}
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value

    async def take(self, count: int, timeout: float = 30.0) -> list[Event]:
        return [await self.next(timeout) for _ in range(count)]


class WsStream:
    """Reads the JSON frames of a live WebSocket."""

    def __init__(self, websocket: aiohttp.ClientWebSocketResponse):
        self.websocket = websocket

    async def next(self, timeout: float = 30.0) -> Event:
        message = await self.websocket.receive(timeout=timeout)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise EOFError(f"the WebSocket ended: {message.type!r} {message.data!r} {message.extra!r}")
        frame = orjson.loads(message.data)
        return Event(frame["id"], frame["event"], frame["data"])

    async def take(self, count: int, timeout: float = 30.0) -> list[Event]:
        return [await self.next(timeout) for _ in range(count)]


def numbers(events: list[Event]) -> list[int]:
    return [int(event.data["number"]) for event in events]
