"""Rebuilding the search index from the store: what ``chatd reindex`` runs.

The store is the source of truth; the index can always be rebuilt from it. The rebuild reads
the stored messages in storage order, a page at a time, and writes each page to the index in
one bulk call, with the next page read while the previous one is written (reading and
indexing wait on different servers, so overlapping them is most of the speed). Writing a
document the live indexer has also written is harmless: both indexes keep the highest
revision of a message, so the rebuild can run while chatd serves.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from chatd.domain import SearchDocument
from chatd.ports import SearchIndex, Store

logger = logging.getLogger(__name__)

# A page of 2,000 typical messages is a bulk request of about half a megabyte: large enough
# that a request's overhead is small beside its work, small enough to retry cheaply.
PAGE_SIZE = 5_000
# Pages being written at once. Two keep the index busy while the next page is read; more only
# queue inside Elasticsearch's write pool on a small machine.
PAGES_IN_FLIGHT = 2
ATTEMPTS = 5


class ReindexFailed(RuntimeError):
    """Documents the index kept refusing after every retry."""


@dataclass(frozen=True)
class ReindexReport:
    messages: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float(self.messages)


class Progress:
    """Where the rebuild reports how far it got: a bar on a terminal, plain lines elsewhere.

    A log collector or a CI console gets a line every ``every`` seconds instead of a bar's
    carriage returns.
    """

    def __init__(self, total: int | None, stream: TextIO | None = None, every: float = 5.0):
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.done = 0
        self.every = every
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="msg", unit_scale=True, file=self.stream, desc="reindex")

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            self._line(now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-9)
        of_total = f" of {self.total:,} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        print(f"reindex: {self.done:,}{of_total} messages, {rate:,.0f}/s", file=self.stream, flush=True)


async def rebuild(
    store: Store,
    search: SearchIndex,
    progress: Progress | None = None,
    page_size: int = PAGE_SIZE,
    pages_in_flight: int = PAGES_IN_FLIGHT,
    retry_delay: Callable[[int], float] = lambda attempt: min(0.2 * 2**attempt, 5.0),
) -> ReindexReport:
    """Write every stored message (its newest revision) to ``search``; the index is usable throughout."""
    started = time.monotonic()
    pages: asyncio.Queue[list[SearchDocument] | None] = asyncio.Queue(maxsize=pages_in_flight)
    written = 0

    async def read() -> None:
        cursor = 0
        while True:
            cursor, documents = await store.documents_after(cursor, page_size)
            if not documents:
                break
            await pages.put(documents)
        for _ in range(pages_in_flight):
            await pages.put(None)

    async def write() -> None:
        nonlocal written
        while (documents := await pages.get()) is not None:
            await _index_page(search, documents, retry_delay)
            written += len(documents)
            if progress is not None:
                progress.advance(len(documents))

    tasks = [asyncio.create_task(read())] + [asyncio.create_task(write()) for _ in range(pages_in_flight)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        if progress is not None:
            progress.close()
    await search.refresh()
    return ReindexReport(written, time.monotonic() - started)


async def _index_page(
    search: SearchIndex, documents: list[SearchDocument], retry_delay: Callable[[int], float]
) -> None:
    """One bulk write; the documents it refused are written again, a bounded number of times."""
    pending = documents
    for attempt in range(ATTEMPTS):
        pending = await search.index(pending)
        if not pending:
            return
        logger.warning("reindex: %d documents refused, retrying", len(pending))
        await asyncio.sleep(retry_delay(attempt))
    raise ReindexFailed(f"{len(pending)} documents refused {ATTEMPTS} times, e.g. {pending[0]}")
