"""The few requests the benchmark sends itself: set-up, the lag probe, and "is everything searchable?".

These go through aiohttp from the benchmark's process. They are few (set-up, ~5 probe messages a
second, a search or two every 50 ms), so the Python client's cost does not shape the figures the
way it would if it carried the load; wrk does that.

Lag from 201 to searchable: a probe message goes to a chat of its own every 1/rate seconds while
wrk loads the other chats. Its lag is the time from its 201 to the first search response that lists
it. One poller serves every outstanding probe: the probe chat holds only probe messages, all with
the word PROBE_WORD, and search lists them by number, so the page that holds the oldest outstanding
probe is the number of probes already found below it, divided by the page size. That keeps the
polling at a rate or two of requests every tick however far the pipeline falls behind, instead of
one poll per outstanding probe piling load on the api it measures. The resolution is the tick
(50 ms) plus one search's latency under load.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PROBE_WORD = "probeword"
PAGE = 100


class Client:
    """The handful of chatd calls the benchmark makes, on one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str):
        self.session = session
        self.base = base_url

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.session.request(method, self.base + path, **kwargs) as response:
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json()

    async def create_application(self, name: str) -> str:
        return str((await self._json("POST", "/applications", json={"application": {"name": name}}))["token"])

    async def create_chat(self, token: str) -> int:
        return int((await self._json("POST", f"/applications/{token}/chats"))["number"])

    async def create_message(self, token: str, chat: int, content: str) -> int:
        path = f"/applications/{token}/chats/{chat}/messages"
        return int((await self._json("POST", path, json={"content": content}))["number"])

    async def search(self, token: str, chat: int, query: str, page: int = 1, per_page: int = 1) -> Any:
        params = {"query": query, "page": str(page), "per_page": str(per_page)}
        return await self._json("GET", f"/applications/{token}/chats/{chat}/messages/search", params=params)


async def wait_searchable(
    client: Client,
    token: str,
    expected: dict[int, int],
    word: str,
    timeout: float,
    interval: float = 0.2,
    stalled_after: float = 30.0,
) -> tuple[float | None, int]:
    """Poll until search for ``word`` finds ``expected[chat]`` messages in every chat.

    Returns the monotonic time at which the last chat was seen complete (None after ``timeout``
    seconds, or once the count has not moved for ``stalled_after`` seconds: a number burnt by a
    failed request never becomes a message), and how many messages the search found in all.

    One chat is asked per tick, the first one not yet complete, moving on at once when it is:
    the run is over when the last chat is, and a search over a chat of thousands of messages
    costs the api (and, on two cores, the workers it shares them with) real time.
    """
    found = dict.fromkeys(expected, 0)
    deadline = time.monotonic() + timeout
    progress, moved_at = -1, time.monotonic()
    for chat, count in expected.items():
        while True:
            found[chat] = (await client.search(token, chat, word))["total"]
            if found[chat] >= count:
                break
            now, total = time.monotonic(), sum(found.values())
            if total != progress:
                progress, moved_at = total, now
            if now > deadline or now - moved_at > stalled_after:
                for other in expected:
                    if found[other] == 0:  # not asked yet: ask once, so the total says how far it got
                        found[other] = (await client.search(token, other, word))["total"]
                return None, sum(found.values())
            await asyncio.sleep(interval)
    return time.monotonic(), sum(found.values())


@dataclass
class LagProbe:
    client: Client
    token: str
    chat: int
    rate: float = 5.0
    tick: float = 0.05
    lags: list[float] = field(default_factory=list)
    failed_posts: int = 0  # probes answered with an error instead of a 201
    not_found: int = 0  # probes answered 201 but not searchable before the timeout
    poll_errors: int = 0
    _outstanding: dict[int, float] = field(default_factory=dict)  # message number -> time of its 201
    _found: set[int] = field(default_factory=set)
    _posting: bool = True

    async def _post(self, serial: int) -> None:
        try:
            number = await self.client.create_message(self.token, self.chat, f"{PROBE_WORD} probe{serial}")
        except (RuntimeError, aiohttp.ClientError):
            self.failed_posts += 1
            return
        self._outstanding[number] = time.monotonic()

    async def _post_loop(self) -> None:
        posts: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        for serial in itertools.count():
            if not self._posting:
                break
            # Not awaited in turn: a slow 201 under load must not thin out the probes.
            task = asyncio.create_task(self._post(serial))
            posts.add(task)
            task.add_done_callback(posts.discard)
            await asyncio.sleep(max(0.0, started + (serial + 1) / self.rate - time.monotonic()))
        await asyncio.gather(*posts)

    async def _poll_once(self) -> None:
        oldest = min(self._outstanding)
        page = sum(1 for number in self._found if number < oldest) // PAGE + 1
        while self._outstanding:
            result = await self.client.search(self.token, self.chat, PROBE_WORD, page=page, per_page=PAGE)
            seen = time.monotonic()
            for message in result["messages"]:
                number = message["message_number"]
                if number in self._outstanding:
                    self.lags.append(seen - self._outstanding.pop(number))
                    self._found.add(number)
            if page >= result["total_pages"]:
                break
            page += 1

    async def run(self, timeout_after_stop: float) -> None:
        """Post and poll until ``stop()`` was called and every probe was found (or the timeout passed)."""
        poster = asyncio.create_task(self._post_loop())
        deadline = float("inf")
        while not (poster.done() and not self._outstanding):
            if poster.done() and deadline == float("inf"):
                deadline = time.monotonic() + timeout_after_stop
            if time.monotonic() > deadline:
                break
            if self._outstanding:
                try:
                    await self._poll_once()
                except (RuntimeError, aiohttp.ClientError):
                    self.poll_errors += 1  # the next tick asks again; a lag only grows meanwhile
            await asyncio.sleep(self.tick)
        await poster
        self.not_found = len(self._outstanding)

    def stop(self) -> None:
        self._posting = False

    def percentile(self, fraction: float) -> float | None:
        if not self.lags:
            return None
        if len(self.lags) == 1:
            return self.lags[0]
        return statistics.quantiles(self.lags, n=100, method="inclusive")[round(fraction * 100) - 1]
