"""The embedded fan-out: Unix datagram sockets in one directory, one per listening process.

Each api process binds ``<directory>/<pid>-<random>.sock``; an announcing process sends each
announcement to every socket there. Whoever can write to the directory could bind a socket
there and receive every announcement (every tenant's messages), or send datagrams to the
listeners and inject events: so the directory must be private (``private_directory``). It is
checked on an open descriptor that every socket path then goes through
(``/proc/self/fd/N/<name>``), which also keeps socket paths short however deep the directory.

A socket nobody reads any more (its process was killed) refuses the datagram and is removed.
Sends wait for room in a listener's queue for a bound (a connected datagram socket is writable
only while its peer's queue has room), so a busy listener slows the sender's background task,
never the storing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat

from chatd.live.cancelling import cancel_requested
from chatd.live.fanout import Deliver, QueuedFanout, Resync

logger = logging.getLogger(__name__)

_SUFFIX = ".sock"
# Bits no one but the owner may have on the directory.
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


class UnsafeSocketDirectory(RuntimeError):
    """The fan-out's directory exists but is not private to the serving user: refused."""


def private_directory(directory: str) -> int:
    """Open ``directory`` (made with mode 0700 if missing) and return its descriptor, if private.

    Private: a real directory (not a symlink), owned by this process's effective user, with no
    permission bits for group or others. The check is on the opened descriptor, so the directory
    cannot be swapped between the check and its use. Raises ``UnsafeSocketDirectory`` otherwise.
    """
    parent = os.path.dirname(directory)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, mode=0o700)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # ELOOP: a symbolic link; ENOTDIR: a file
        raise UnsafeSocketDirectory(
            f"live fan-out directory {directory} is not a directory of its own (a symbolic link or a file?): {exc}"
        ) from exc
    info = os.fstat(fd)
    problem = None
    if info.st_uid != os.geteuid():
        problem = f"is owned by uid {info.st_uid}, not by the serving user (uid {os.geteuid()})"
    elif stat.S_IMODE(info.st_mode) & _OTHERS:
        problem = f"has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0700 (no access for group or others)"
    if problem is not None:
        os.close(fd)
        raise UnsafeSocketDirectory(
            f"live fan-out directory {directory} {problem}: another local user could read or inject live "
            "events. Remove it (chatd makes it again) or set CHATD_LIVE_SOCKET_DIRECTORY to a private one"
        )
    return fd


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
        self._directory_fd: int | None = None

    async def open(self) -> None:
        self._ensure_directory()
        await super().open()

    async def close(self) -> None:
        await super().close()
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()
        if self._directory_fd is not None and self.own_path is None:
            os.close(self._directory_fd)
            self._directory_fd = None

    def _ensure_directory(self) -> int:
        if self._directory_fd is None:
            self._directory_fd = private_directory(self.directory)
        return self._directory_fd

    def _path(self, name: str) -> str:
        """A socket's path through the checked descriptor (short, and never another directory)."""
        return f"/proc/self/fd/{self._ensure_directory()}/{name}"

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
        names = os.listdir(self._ensure_directory())
        paths = [self._path(name) for name in names if name.endswith(_SUFFIX)]
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
                os.unlink(os.path.basename(path), dir_fd=self._ensure_directory())  # its process is gone

    async def listen(self, deliver: Deliver, resync: Resync) -> None:
        name = f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        path = self._path(name)
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
                os.unlink(name, dir_fd=self._ensure_directory())
            self.own_path = None
