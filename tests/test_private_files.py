"""Files chatd creates are its user's alone (issue 22): the embedded SQLite files hold every
application's token. Real ``chatd migrate`` and ``chatd serve`` processes, started under the
usual 022 umask, in a directory chatd has to create."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatd import cli
from tests.conftest import embedded_settings
from tests.processes import await_ready, settings_env
from tests.servers import free_port

LOOSE_UMASK = 0o022


def modes(folder: Path) -> dict[str, str]:
    """Each path under ``folder`` (itself included) and its permission bits, in octal."""
    paths = [folder, *sorted(folder.rglob("*"))]
    return {str(path.relative_to(folder.parent)): oct(stat.S_IMODE(path.stat().st_mode)) for path in paths}


def assert_private(folder: Path) -> None:
    found = modes(folder)
    assert "data/chatd.db" in found and "data/search.db" in found, found
    for path, mode in found.items():
        if (folder.parent / path).is_dir():
            assert mode == "0o700", (path, found)
        elif not (folder.parent / path).is_socket():  # the live fan-out's: in a 0700 directory
            assert mode == "0o600", (path, found)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"  # not there yet: chatd makes it


def env_for(data: Path) -> dict[str, str]:
    return settings_env(embedded_settings(data))


def test_migrate_under_a_022_umask_makes_private_files(data: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chatd", "migrate"],
        env=env_for(data),
        umask=LOOSE_UMASK,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert_private(data)


async def test_serve_under_a_022_umask_makes_private_files(data: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**env_for(data), "CHATD_PORT": str(port), "CHATD_HOST": "127.0.0.1"}
    log_path = tmp_path / "chatd.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatd", "serve"], env=env, umask=LOOSE_UMASK, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        await await_ready(process, f"http://127.0.0.1:{port}", log_path, "chatd serve")
        assert_private(data)
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def restored_umask() -> Iterator[None]:
    saved = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(saved)


@pytest.mark.parametrize(("before", "after"), [(0o022, 0o077), (0o002, 0o077), (0o027, 0o077), (0o277, 0o277)])
def test_the_umask_gains_077_and_a_stricter_one_is_kept(before: int, after: int, restored_umask: None) -> None:
    os.umask(before)
    cli.keep_files_private()
    assert os.umask(before) == after
