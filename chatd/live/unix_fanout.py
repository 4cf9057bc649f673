"""The embedded fan-out: Unix datagram sockets in one directory, one per listening process.

Each api process binds ``<directory>/<pid>-<random>.sock``; an announcing process sends each
announcement to every socket there. A socket nobody reads any more (its process was killed)
refuses the datagram and is removed. Sends wait for room in a listener's queue for a bound
(a connected datagram socket is writable only while its peer's queue has room), so a busy
listener slows the sender's background task, never the storing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

from chatd.live.cancelling import cancel_requested
from chatd.live.fanout import Deliver, QueuedFanout, Resync

logger = logging.getLogger(__name__)

_SUFFIX = ".sock"
# Enough for bursts of announcements while the event loop is busy elsewhere.
_RECEIVE_BUFFER = 4 * 1024 * 1024


class UnixFanout(QueuedFanout):
    """Announcements over Unix datagram sockets between processes of one machine."""

    def __init__(self, directory: str, send_timeout: float = 0.5):
        super().__init__(send_timeout=send_timeout * 4)
        self.directory = directory
        self.peer_timeout = send_timeout
        self.own_path: str | None = None
        self._peers: dict[str, socket.socket] = {}

    async def open(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        await super().open()

    async def close(self) -> None:
        await super().close()
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()

    async def _send(self, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        for path in self._listener_paths():
            peer = self._peers.get(path) or self._connect(path)
            if peer is None:
                continue
            try:
                async with asyncio.timeout(self.peer_timeout):
                    await loop.sock_sendall(peer, body)
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(path, stale=True)
            except (TimeoutError, OSError) as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from None
                # A listener too busy to take it: that one misses this announcement.
                self.dropped += 1
                logger.debug("live announcement not sent to %s: %s", path, exc)

    def _listener_paths(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        paths = [os.path.join(self.directory, name) for name in names if name.endswith(_SUFFIX)]
        for gone in set(self._peers) - set(paths):
            self._forget(gone, stale=False)
        return paths

    def _connect(self, path: str) -> socket.socket | None:
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        peer.setblocking(False)
        try:
            peer.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            peer.close()
            self._forget(path, stale=True)
            return None
        self._peers[path] = peer
        return peer

    def _forget(self, path: str, *, stale: bool) -> None:
        peer = self._peers.pop(path, None)
        if peer is not None:
            peer.close()
        if stale and path != self.own_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # its process is gone: nobody will bind it again

    async def listen(self, deliver: Deliver, resync: Resync) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.setblocking(False)
        with contextlib.suppress(OSError):
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        listener.bind(path)
        self.own_path = path
        loop = asyncio.get_running_loop()

        def readable() -> None:
            while True:
                try:
                    body = listener.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    return
                deliver(body)

        loop.add_reader(listener.fileno(), readable)
        try:
            resync()
            await asyncio.Event().wait()
        finally:
            loop.remove_reader(listener.fileno())
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.own_path = None
