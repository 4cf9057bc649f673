"""A steady client load that remembers every number the API handed out.

Each send has its own content and Idempotency-Key. On a 503, a 5xx or a lost connection
it retries with the same key, against the other api process too, as a client behind a
load balancer would. Only a 201 counts as "acked": that is the promise checked later.

Besides the acked numbers the load keeps what the verdict needs of each *attempt*: how many
answers were a 5xx other than 503 (chatd answers an outage with 503 and Retry-After, never
with a 500), and how many attempts got no answer within the request deadline
(``CHATD_REQUEST_DEADLINE_SECONDS``) plus ``LATE_MARGIN`` seconds: each attempt runs under a
client timeout of that length, so an attempt that hits it counts as late.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from chatd.settings import Settings

# Beyond the deadline, what an answer may take to travel back on a machine whose two cores the
# load, the servers and every chatd process share.
LATE_MARGIN = 1.0


def request_deadline() -> float:
    """The deadline chatd answers every request within (its default, unless a test overrides it)."""
    return float(getattr(Settings(), "request_deadline_seconds", 5.0))


def is_500(status: int) -> bool:
    """An answer the verdict refuses: a server error that is not 503 (the one outage answer)."""
    return status >= 500 and status != 503


@dataclass
class LoadResult:
    acked_messages: dict[tuple[int, int], str] = field(default_factory=dict)
    acked_chats: set[int] = field(default_factory=set)
    double_numbered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    slowest_failure_seconds: float = 0.0
    # Answers that were a 5xx other than 503, and attempts with no answer within deadline + margin.
    answers_500: int = 0
    late: int = 0
    slowest_answer_seconds: float = 0.0
    attempts: int = 0
    # When (time.monotonic()) the first and the last attempt that did not get a 201 began: the
    # window in which the service refused or could not be reached (None: no attempt failed).
    first_failure_at: float | None = None
    last_failure_at: float | None = None

    @property
    def failure_window_seconds(self) -> float:
        if self.first_failure_at is None or self.last_failure_at is None:
            return 0.0
        return self.last_failure_at - self.first_failure_at

    def failed_at(self, moment: float) -> None:
        # Attempts end out of order (one began before another that failed first): the earliest and latest.
        self.first_failure_at = moment if self.first_failure_at is None else min(self.first_failure_at, moment)
        self.last_failure_at = moment if self.last_failure_at is None else max(self.last_failure_at, moment)

    def merge_acked(self, chat: int, number: int, content: str) -> None:
        """Record an acked message (a second content under one number is a double numbering)."""
        previous = self.acked_messages.get((chat, number))
        if previous is not None and previous != content:
            self.double_numbered += 1
        self.acked_messages[(chat, number)] = content


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
        rate: float | None = None,
        deadline: float | None = None,
    ):
        self.api_urls = api_urls
        self.token = token
        self.chats = list(chats)
        self.concurrency = concurrency
        self.pause = pause
        self.max_sends = max_sends
        self.give_up_after = give_up_after
        # At most ``rate`` sends a second over all clients (None: as fast as ``pause`` allows).
        self.rate = rate
        self.deadline = request_deadline() if deadline is None else deadline
        self.result = LoadResult(acked_chats=set(chats))
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sends = itertools.count()
        self._next_slot = 0.0
        self._session: aiohttp.ClientSession | None = None

    @property
    def attempt_timeout(self) -> float:
        return self.deadline + LATE_MARGIN

    async def start(self) -> None:
        # No overall timeout on the session: each attempt gets its own (see _post).
        connector = aiohttp.TCPConnector(limit=max(32, self.concurrency + 8))
        self._session = aiohttp.ClientSession(connector=connector)
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
            await self._pace()
            if send % 100 == 99:
                await self._create_chat(index)
            else:
                await self._create_message(index, send)
            await asyncio.sleep(self.pause)

    async def _pace(self) -> None:
        """With a ``rate``, wait for this send's slot (slots 1/rate apart, shared by every client)."""
        if self.rate is None:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _create_message(self, index: int, send: int) -> None:
        chat = self.chats[send % len(self.chats)]
        content = f"fault load {uuid.uuid4().hex}"
        body = await self._post(
            index, f"/applications/{self.token}/chats/{chat}/messages", {"content": content}, idempotency_key=content
        )
        if body is None:
            return
        self.result.merge_acked(chat, int(body["number"]), content)

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
        timeout = aiohttp.ClientTimeout(total=self.attempt_timeout)
        for attempt in itertools.count():
            url = self.api_urls[(index + attempt) % len(self.api_urls)] + path
            attempt_started = time.monotonic()
            self.result.attempts += 1
            try:
                async with self._session.post(
                    url, json=payload, headers={"Idempotency-Key": idempotency_key}, timeout=timeout
                ) as response:
                    self.result.statuses[str(response.status)] += 1
                    self._answered(time.monotonic() - attempt_started)
                    if is_500(response.status):
                        self.result.answers_500 += 1
                    if response.status == 201:
                        return await response.json()  # type: ignore[no-any-return]
                    self.result.failed_at(attempt_started)
                    if response.status < 500 and response.status != 409:
                        raise AssertionError(f"POST {path}: {response.status} {await response.text()}")
            except TimeoutError as exc:
                # No answer within deadline + margin: late, whatever comes after.
                self.result.statuses[type(exc).__name__] += 1
                self.result.late += 1
                self.result.failed_at(attempt_started)
            except aiohttp.ClientError as exc:
                self.result.statuses[type(exc).__name__] += 1
                self.result.failed_at(attempt_started)
            self.result.slowest_failure_seconds = max(
                self.result.slowest_failure_seconds, time.monotonic() - attempt_started
            )
            if time.monotonic() - started > self.give_up_after:
                self.result.statuses["gave_up"] += 1
                return None
            await asyncio.sleep(min(0.05 * 2 ** min(attempt, 5), 1.0))
        return None

    def _answered(self, seconds: float) -> None:
        self.result.slowest_answer_seconds = max(self.result.slowest_answer_seconds, seconds)
        if seconds > self.attempt_timeout:  # the headers came, but after the deadline's margin
            self.result.late += 1
