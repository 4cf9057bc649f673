"""`chatd promote` refuses a server that is not promoted yet, and a store that has no replica."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from chatd.settings import Settings
from tests.cluster.test_node_loss import REPLICA_URL
from tests.conftest import Namespace
from tests.processes import settings_env

pytestmark = [pytest.mark.cluster, pytest.mark.real, pytest.mark.timeout(120)]


async def promote(settings: Settings) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatd",
        "promote",
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return int(process.returncode or 0), output.decode()


async def test_a_replica_still_replicating_is_refused_and_left_alone(tmp_path: Path) -> None:
    namespace = Namespace("real", tmp_path)
    try:
        settings = await namespace.serving_settings()
        code, said = await promote(settings.replace(database_url=f"{REPLICA_URL}/{namespace.name}"))
        assert code == 2, said
        assert "not promoted yet: it is read-only" in said
    finally:
        await namespace.cleanup()


async def test_an_embedded_store_is_refused(tmp_path: Path) -> None:
    code, said = await promote(Settings(database_url=f"sqlite:///{tmp_path}/chatd.db"))
    assert code == 2, said
    assert "chatd promote is for a MariaDB/MySQL store" in said
