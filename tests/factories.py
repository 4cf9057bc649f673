"""Builders for domain records, so tests say only what matters to them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from chatd.domain import ChatJob, MessageJob, SearchDocument

T = TypeVar("T")
WHEN = datetime(2026, 11, 11, 10, 30, 0, 123000, tzinfo=UTC)


class FakeClock:
    """Seconds since the epoch, as ``time.time`` answers, that pass only when a test moves them."""

    def __init__(self, now: float | None = None):
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chat_job(application_id: int, number: int) -> ChatJob:
    return ChatJob(application_id, number, WHEN)


def message_job(application_id: int, chat: int, number: int, content: str = "hello") -> MessageJob:
    return MessageJob(application_id, chat, number, content, WHEN)


def document(application_id: int, chat: int, number: int, content: str, revision: int = 1) -> SearchDocument:
    return SearchDocument(application_id, chat, number, content, WHEN, revision)


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.05) -> T:
    """Await ``check()`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def fails_without_hanging(action: Callable[[], Awaitable[object]], bound: float = 15.0) -> None:
    """Assert that ``action`` raises BackendUnavailable instead of hanging.

    A guard against hangs (an outage must become a 503, not a stuck request), not a speed
    check: ``bound`` is far above any timeout the adapters set, except where a test passes
    the adapter's own timeout to show a call did not wait for it.
    """
    from chatd.errors import BackendUnavailable

    try:
        async with asyncio.timeout(bound):
            with pytest.raises(BackendUnavailable):
                await action()
    except TimeoutError:
        raise AssertionError(f"still waiting after {bound} s instead of failing") from None
