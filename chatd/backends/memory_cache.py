"""An in-process cache with expiry: the embedded stand-in for Redis' cache role.

Each process has its own; with several api processes on the embedded default, one
process' cached application may lag another's rename until it expires.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class MemoryCache:
    name = "memory-cache"

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self._entries.clear()

    async def ping(self) -> None:
        pass

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        return entry[1]

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._entries[key] = (time.monotonic() + ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def add(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        if await self.get(key) is not None:
            return False
        await self.set(key, value, ttl_seconds)
        return True

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)
