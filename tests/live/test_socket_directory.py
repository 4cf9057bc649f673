"""The embedded fan-out's socket directory is private to the serving user (issue 17, item 6).

Whoever can write to it could receive every tenant's live messages or inject events: chatd
makes it with mode 0700 beside the store, and refuses one that exists with another owner, a
wider mode, or as a symbolic link.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatd.live.events import decode_announcement
from chatd.live.fanouts import make_fanout
from chatd.live.unix_fanout import UnixFanout, UnsafeSocketDirectory
from chatd.settings import Settings
from tests.conftest import embedded_settings
from tests.live.test_feed import FakeStore
from tests.processes import settings_env

NOBODY = 65534


@pytest.fixture
def loose_umask() -> Iterator[None]:
    saved = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(saved)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


async def test_a_missing_directory_is_made_0700_for_the_serving_user(tmp_path: Path, loose_umask: None) -> None:
    directory = tmp_path / "data" / "chatd.live"
    fanout = UnixFanout(str(directory))
    await fanout.open()
    try:
        assert mode_of(directory) == 0o700 and mode_of(directory.parent) == 0o700
        assert directory.stat().st_uid == os.geteuid()
    finally:
        await fanout.close()


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701, 0o1777])
async def test_a_directory_with_a_wider_mode_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "chatd.live"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(UnsafeSocketDirectory, match=f"has mode {mode:04o}; it must be 0700"):
        await UnixFanout(str(directory)).open()
    assert mode_of(directory) == mode  # left as it was: the operator decides


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
async def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "chatd.live"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(UnsafeSocketDirectory, match=f"owned by uid {NOBODY}, not by the serving user"):
        await UnixFanout(str(directory)).open()


async def test_a_symbolic_link_is_refused_even_to_a_private_directory(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "chatd.live"
    link.symlink_to(target)
    with pytest.raises(UnsafeSocketDirectory, match="symbolic link"):
        await UnixFanout(str(link)).open()


async def test_the_default_is_beside_the_store_however_deep_and_it_delivers(tmp_path: Path) -> None:
    """A store too deep for a socket path (107 bytes) keeps its sockets beside it, never in /tmp."""
    data = tmp_path / ("d" * 90) / ("e" * 90)
    settings = Settings(database_url=f"sqlite:///{data}/chatd.db")
    listening, announcing = make_fanout(settings), make_fanout(settings)
    assert isinstance(listening, UnixFanout) and isinstance(announcing, UnixFanout)
    assert listening.directory == f"{data}/chatd.live"
    received: asyncio.Queue[bytes] = asyncio.Queue()
    resynced = asyncio.Event()
    await listening.open()
    await announcing.open()
    listener = asyncio.create_task(listening.listen(received.put_nowait, resynced.set))
    try:
        await asyncio.wait_for(resynced.wait(), 10)
        assert len(os.listdir(data / "chatd.live")) == 1  # the listener's socket, in that directory
        announcing.announce([FakeStore.event(1)])
        body = await asyncio.wait_for(received.get(), 10)
        assert [event.number for event in decode_announcement(body)] == [1]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await listening.close()
        await announcing.close()


def test_the_directory_can_be_set(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"CHATD_DATABASE_URL": f"sqlite:///{tmp_path}/chatd.db", "CHATD_LIVE_SOCKET_DIRECTORY": f"{tmp_path}/sockets"}
    )
    fanout = make_fanout(settings)
    assert isinstance(fanout, UnixFanout) and fanout.directory == f"{tmp_path}/sockets"


def test_chatd_serve_refuses_to_start_with_an_unsafe_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "chatd.live").mkdir()
    (data / "chatd.live").chmod(0o777)
    done = subprocess.run(
        [sys.executable, "-m", "chatd", "serve", "--port", "0"],
        env=settings_env(embedded_settings(data)),
        capture_output=True,
        timeout=60,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr[-2000:]
    assert f"live fan-out directory {data}/chatd.live has mode 0777" in stderr
    assert "Traceback" not in stderr
