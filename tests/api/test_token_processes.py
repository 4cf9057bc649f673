"""A rotation or revocation on one api process reaches every other within a second, on both sets.

Two ``chatd serve --role api`` processes share the store and the cache (Redis, or the embedded
file). Each has used the old token for a write first, so each holds it in its own memo; the
rotation and the revocation go to the first, and the second is watched: its writes and reads
with the old token answer 404 within a second of the expiry (or of the revocation's 204), and a
live stream opened on it with the old token is closed with ``token_revoked``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import aiohttp

from tests.conftest import Namespace
from tests.live.helpers import SseStream
from tests.processes import ChatdProcess, application_and_chat, created

# What "within a second" is allowed on a loaded 2-core machine: the bound, and room to be scheduled.
BOUND_SECONDS = 1.0
SLACK_SECONDS = 0.75


async def _first_refusal(session: aiohttp.ClientSession, url: str, token: str, chat: int, timeout: float) -> float:
    """Write and read with ``token`` until both answer 404; the wall time of that answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.post(f"{url}/applications/{token}/chats/{chat}/messages", json={"content": "x"}) as write:
            written = write.status
        async with session.get(f"{url}/applications/{token}") as read:
            shown = read.status
        if written == 404 and shown == 404:
            return time.time()
        # Reads go through the shared cache (at once); writes may use the memo for up to a second.
        assert written in (201, 404, 503) and shown in (200, 404, 503), (written, shown)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{token[:6]}... still works on {url} after {timeout} s")


async def test_expiry_and_revocation_reach_every_api_process(namespace: Namespace, tmp_path: Path) -> None:
    settings = await namespace.serving_settings()
    first = await ChatdProcess(settings, "api", tmp_path).start()
    second = await ChatdProcess(settings, "api", tmp_path).start()
    try:
        async with aiohttp.ClientSession() as session:
            old, chat = await application_and_chat(session, "rotation", first.url)
            for process in (first, second):  # each process now keeps the old token in its memo
                await created(session, f"{process.url}/applications/{old}/chats/{chat}/messages", {"content": "m"})
            async with session.get(f"{second.url}/applications/{old}/chats/{chat}/events") as response:
                stream = SseStream(response)
                rotated = await created(session, f"{first.url}/applications/{old}/tokens", {"grace_seconds": 2})
                new = rotated["token"]
                expires = datetime.fromisoformat(rotated["previous_token_expires_at"].replace("Z", "+00:00"))
                # In its grace period the old token works on both processes.
                for process in (first, second):
                    await created(session, f"{process.url}/applications/{old}/chats/{chat}/messages", {"content": "g"})
                for process in (first, second):
                    refused_at = await _first_refusal(session, process.url, old, chat, timeout=10)
                    assert refused_at - expires.timestamp() <= BOUND_SECONDS + SLACK_SECONDS, process.url
                closed = await stream.next(timeout=BOUND_SECONDS + SLACK_SECONDS + 2)
                assert closed.event == "close" and closed.data["error"]["code"] == "token_revoked"

            # Revocation: the current token rotates again, its old one is revoked on the first process.
            newer = (await created(session, f"{first.url}/applications/{new}/tokens", {"grace_seconds": 3600}))["token"]
            for process in (first, second):
                await created(session, f"{process.url}/applications/{new}/chats/{chat}/messages", {"content": "w"})
            async with session.delete(f"{first.url}/applications/{newer}/tokens/previous") as response:
                assert response.status == 204
                revoked_at = time.time()
            refused_at = await _first_refusal(session, second.url, new, chat, timeout=10)
            assert refused_at - revoked_at <= BOUND_SECONDS + SLACK_SECONDS
            await created(session, f"{second.url}/applications/{newer}/chats/{chat}/messages", {"content": "still"})
    finally:
        first.stop_quietly()
        second.stop_quietly()
