"""systemd's notification protocol (sd_notify), for ``Type=notify`` units and the watchdog.

The protocol is one datagram per notification, ``KEY=value`` lines, sent to the unix socket
named by ``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). That is a dozen
lines; a package for it (sdnotify, last released 2017) would add a dependency and no safety.

chatd sends ``READY=1`` once every backend answers (so ``systemctl start`` returns when the
process can serve), ``WATCHDOG=1`` from the event loop at half of ``WATCHDOG_USEC`` (a stalled
loop stops the pings and systemd restarts the process), and ``STOPPING=1`` when a SIGTERM
starts the drain. Without ``NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, Sequence

from chatd.ports import Backend

logger = logging.getLogger(__name__)

READY_POLL_SECONDS = 0.5
PING_TIMEOUT = 2.0


class Notifier:
    """Sends notifications to systemd's socket; does nothing when there is none."""

    def __init__(self, address: str | None, watchdog_seconds: float | None = None):
        self.address = address
        self.watchdog_seconds = watchdog_seconds
        self._socket: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process the watchdog is for: not a child that inherited it.
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        return cls(address, watchdog)

    def notify(self, *states: str) -> bool:
        """Send ``states`` (``"READY=1"``, ...) as one notification; False if it could not go."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(states).encode(), target)
        except OSError as exc:  # systemd gone or the socket wrong: serving goes on regardless
            logger.warning("sd_notify to %s failed: %r", self.address, exc)
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


async def ready_when_backends_answer(notifier: Notifier, backends: Sequence[Backend]) -> None:
    """Send ``READY=1`` once every backend answers its ping (polling until they do)."""
    if not notifier.address:
        return
    while True:
        failed = await _unanswered(backends)
        if not failed:
            notifier.notify("READY=1", "STATUS=serving; every backend answers")
            logger.info("ready: every backend answers (told systemd)")
            return
        notifier.notify(f"STATUS=waiting for {', '.join(failed)}")
        await asyncio.sleep(READY_POLL_SECONDS)


async def _unanswered(backends: Sequence[Backend]) -> list[str]:
    async def answers(backend: Backend) -> bool:
        try:
            await asyncio.wait_for(backend.ping(), PING_TIMEOUT)
        except Exception:
            return False
        return True

    results = await asyncio.gather(*(answers(backend) for backend in backends))
    return sorted({backend.name for backend, ok in zip(backends, results) if not ok})


async def watchdog(notifier: Notifier) -> None:
    """Ping systemd's watchdog at half its interval, from the event loop, until cancelled."""
    if not notifier.address or not notifier.watchdog_seconds:
        return
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(notifier.watchdog_seconds / 2)
