"""Backends as async context managers: ``async with backend:`` opens it, and closes it however
the block ends. The registry enters every backend on one ``AsyncExitStack``, so a close that
fails cannot keep the others open (as ``async with Database(url)`` in encode/databases)."""

from __future__ import annotations

from typing import Self


class Lifecycle:
    """``open`` on entry, ``close`` on exit; subclasses say what opening and closing mean."""

    async def open(self) -> None:
        """Make what the backend needs (connections, threads, tables); it may be called again after close."""

    async def close(self) -> None:
        """Release what ``open`` made; closing a closed backend does nothing."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
