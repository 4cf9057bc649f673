"""A private Toxiproxy server, and the few calls of its HTTP API the fault tests make.

Toxiproxy (https://github.com/Shopify/toxiproxy, v2.12) is a TCP proxy whose links can be made
slow or silent at will. `make toxiproxy` builds ``toxiproxy-server`` from its Go module into the
venv's bin directory. A test runs its own server on a free port and one proxy per backend it
wants to disturb, each listening on a free port in front of the real server::

    async with running(Toxiproxy(tmp_path)) as toxiproxy:
        port = await toxiproxy.create("mariadb", 3306)
        ...  # point chatd at 127.0.0.1:port
        async with toxiproxy.partitioned("mariadb"):
            ...  # no byte passes, either way; no RST either: connections just hang

A partition is the ``timeout`` toxic with ``timeout`` 0 on both streams: Toxiproxy keeps every
connection open (new ones too: it accepts them itself) and drops their data until the toxic is
removed; removing it closes the connections whose data it dropped (their streams are corrupt),
which is what a client sees of a partition that heals after its TCP timeouts. Latency is the
``latency`` toxic, on both streams (``latency / 2`` each way, so a round trip costs ``latency``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.servers import PrivateServer, free_port

BINARY = Path(os.environ.get("CHATD_TOXIPROXY_SERVER", Path(sys.executable).parent / "toxiproxy-server"))
STREAMS = ("upstream", "downstream")


class ToxiproxyError(RuntimeError):
    """The Toxiproxy API refused a call."""


class Toxiproxy(PrivateServer):
    name = "toxiproxy"
    start_timeout = 10.0
    stop_timeout = 5.0

    def prepare(self) -> None:
        if not BINARY.exists():
            pytest.fail(f"{BINARY} is missing: `make toxiproxy` builds it")

    def command(self) -> list[str]:
        return [str(BINARY), "-host", "127.0.0.1", "-port", str(self.port)]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _call(self, method: str, path: str, payload: object = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, self.api + path, json=payload) as response,
        ):
            text = await response.text()
            if response.status >= 300:
                raise ToxiproxyError(f"{method} {path}: {response.status} {text}")
            return await response.json(content_type=None) if text.strip() else None

    async def create(self, proxy: str, upstream_port: int, *, listen_port: int | None = None) -> int:
        """A proxy named ``proxy`` in front of 127.0.0.1:``upstream_port``; the port it listens on."""
        port = listen_port or free_port()
        await self._call(
            "POST",
            "/proxies",
            {"name": proxy, "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{upstream_port}", "enabled": True},
        )
        return port

    async def set_upstream(self, proxy: str, upstream_port: int) -> None:
        """Send the proxy's traffic to another server (Toxiproxy drops the proxy's open connections)."""
        await self._call("POST", f"/proxies/{proxy}", {"upstream": f"127.0.0.1:{upstream_port}"})

    async def add_toxic(self, proxy: str, name: str, kind: str, stream: str, **attributes: object) -> None:
        await self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes},
        )

    async def remove_toxic(self, proxy: str, name: str) -> None:
        await self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    async def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(await self._call("GET", f"/proxies/{proxy}/toxics"))

    async def partition(self, proxy: str) -> None:
        """From now on no byte passes the proxy, either way, and nothing is reset."""
        for stream in STREAMS:
            await self.add_toxic(proxy, f"partition_{stream}", "timeout", stream, timeout=0)

    async def heal(self, proxy: str) -> None:
        """Remove every toxic of the proxy."""
        for toxic in await self.toxics(proxy):
            await self.remove_toxic(proxy, toxic["name"])

    async def slow(self, proxy: str, milliseconds: int) -> None:
        """Every byte waits: ``milliseconds`` per round trip (half on each stream)."""
        for stream in STREAMS:
            await self.add_toxic(proxy, f"latency_{stream}", "latency", stream, latency=milliseconds // 2)

    @asynccontextmanager
    async def partitioned(self, proxy: str) -> AsyncIterator[None]:
        await self.partition(proxy)
        try:
            yield
        finally:
            await self.heal(proxy)

    @asynccontextmanager
    async def latency(self, proxy: str, milliseconds: int) -> AsyncIterator[None]:
        await self.slow(proxy, milliseconds)
        try:
            yield
        finally:
            await self.heal(proxy)
