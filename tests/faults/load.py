"""A steady client load that remembers every number the API handed out.

Each send has its own content and Idempotency-Key. On a 503, a 5xx or a lost connection
it retries with the same key, against the other api process too, as a client behind a
load balancer would. Only a 201 counts as "acked": that is the promise checked later.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadResult:
    acked_messages: dict[tuple[int, int], str] = field(default_factory=dict)
    acked_chats: set[int] = field(default_factory=set)
    double_numbered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    slowest_failure_seconds: float = 0.0


class LoadClient:
    def __init__(
        self,
        api_urls: list[str],
        token: str,
        chats: list[int],
        *,
        concurrency: int = 6,
        pause: float = 0.01,
        max_sends: int = 20_000,
        give_up_after: float = 120.0,
    ):
        self.api_urls = api_urls
        self.token = token
        self.chats = list(chats)
        self.concurrency = concurrency
        self.pause = pause
        self.max_sends = max_sends
        self.give_up_after = give_up_after
        self.result = LoadResult(acked_chats=set(chats))
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sends = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=32))
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.concurrency)]

    async def stop(self) -> LoadResult:
        """Stop sending; requests in flight finish (retrying until acked or given up)."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()
        return self.result

    async def _client(self, index: int) -> None:
        while not self._stopping.is_set():
            send = next(self._sends)
            if send >= self.max_sends:
                return
            if send % 100 == 99:
                await self._create_chat(index)
            else:
                await self._create_message(index, send)
            await asyncio.sleep(self.pause)

    async def _create_message(self, index: int, send: int) -> None:
        chat = self.chats[send % len(self.chats)]
        content = f"fault load {uuid.uuid4().hex}"
        body = await self._post(
            index, f"/applications/{self.token}/chats/{chat}/messages", {"content": content}, idempotency_key=content
        )
        if body is None:
            return
        key = (chat, int(body["number"]))
        previous = self.result.acked_messages.get(key)
        if previous is not None and previous != content:
            self.result.double_numbered += 1
        self.result.acked_messages[key] = content

    async def _create_chat(self, index: int) -> None:
        body = await self._post(index, f"/applications/{self.token}/chats", None, idempotency_key=uuid.uuid4().hex)
        if body is not None:
            number = int(body["number"])
            if number in self.result.acked_chats:
                self.result.double_numbered += 1
            self.result.acked_chats.add(number)
            self.chats.append(number)

    async def _post(self, index: int, path: str, payload: object, idempotency_key: str) -> dict | None:  # type: ignore[type-arg]
        assert self._session is not None
        started = time.monotonic()
        for attempt in itertools.count():
            url = self.api_urls[(index + attempt) % len(self.api_urls)] + path
            attempt_started = time.monotonic()
            try:
                async with self._session.post(
                    url, json=payload, headers={"Idempotency-Key": idempotency_key}
                ) as response:
                    self.result.statuses[str(response.status)] += 1
                    if response.status == 201:
                        return await response.json()  # type: ignore[no-any-return]
                    if response.status < 500 and response.status != 409:
                        raise AssertionError(f"POST {path}: {response.status} {await response.text()}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.result.statuses[type(exc).__name__] += 1
            self.result.slowest_failure_seconds = max(
                self.result.slowest_failure_seconds, time.monotonic() - attempt_started
            )
            if time.monotonic() - started > self.give_up_after:
                self.result.statuses["gave_up"] += 1
                return None
            await asyncio.sleep(min(0.05 * 2 ** min(attempt, 5), 1.0))
        return None
