"""systemd: the units pass `systemd-analyze verify`, and `chatd serve` speaks sd_notify to a
NOTIFY_SOCKET this test binds (READY=1 once the backends answer, watchdog pings, STOPPING=1)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatd import sdnotify
from tests.conftest import Namespace
from tests.factories import eventually
from tests.processes import ChatdProcess

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make ops-tools` installs it"
    # verify checks that ExecStart's program exists: the units name /opt/chatd/bin/chatd (their
    # install layout), so the copies verified here name this checkout's chatd instead.
    chatd = str(Path(sys.executable).with_name("chatd"))
    units = []
    for unit in sorted(UNITS.glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/chatd/bin/chatd", chatd))
        units.append(str(copy))
    assert sorted(Path(unit).name for unit in units) == [
        "chatd-api.service", "chatd-backup.service", "chatd-migrate.service", "chatd-worker.service",
    ]  # fmt: skip
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too, reporting them: any output is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_the_serving_units_are_notify_with_a_watchdog() -> None:
    for role in ("api", "worker"):
        text = (UNITS / f"chatd-{role}.service").read_text()
        assert "\nType=notify\n" in text and "\nWatchdogSec=" in text and "\nNotifyAccess=main\n" in text, role


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def _received(listener: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.append(listener.recv(4096).decode())
        except BlockingIOError:
            return into


async def test_chatd_serve_notifies_ready_watchdog_and_stopping(
    namespace: Namespace, tmp_path: Path, notify_socket: socket.socket
) -> None:
    process = ChatdProcess(await namespace.serving_settings(), "worker", tmp_path)
    process.env.update({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "200000"})
    messages: list[str] = []
    try:
        await process.start()

        async def ready() -> bool:
            return any("READY=1" in m for m in _received(notify_socket, messages))

        async def pinged_thrice() -> bool:
            # Pinged at half the interval, from the event loop, again and again.
            return sum(m == "WATCHDOG=1" for m in _received(notify_socket, messages)) >= 3

        await eventually(ready)
        await eventually(pinged_thrice)
        assert await process.terminate() == 0
        _received(notify_socket, messages)
    finally:
        process.stop_quietly()
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    stopping = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    assert ready < stopping
    assert not any("READY=1" in m for m in messages[stopping:])


class _Backend:
    def __init__(self, name: str, failures: int):
        self.name = name
        self.failures = failures

    async def ping(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("not yet")


async def test_ready_waits_until_every_backend_answers(tmp_path: Path, notify_socket: socket.socket) -> None:
    notifier = sdnotify.Notifier(notify_socket.getsockname())
    store, search = _Backend("mysql", 0), _Backend("elasticsearch", 2)
    await asyncio.wait_for(sdnotify.ready_when_backends_answer(notifier, [store, search]), 10)  # type: ignore[list-item]
    messages = _received(notify_socket, [])
    assert messages[:2] == ["STATUS=waiting for elasticsearch"] * 2
    assert messages[2].startswith("READY=1\n")
    notifier.close()


def test_an_abstract_socket_address_and_the_watchdog_settings() -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"chatd-test-{id(listener)}"
    listener.bind("\0" + name)
    try:
        notifier = sdnotify.Notifier.from_env({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_seconds == 30.0
        assert notifier.notify("READY=1")
        assert listener.recv(100) == b"READY=1"
        notifier.close()
    finally:
        listener.close()
    # A watchdog meant for another process (WATCHDOG_PID) is not ours; no socket, no-op.
    assert (
        sdnotify.Notifier.from_env(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
        ).watchdog_seconds
        is None
    )
    assert not sdnotify.Notifier.from_env({}).notify("READY=1")
