"""Real ``chatd serve`` processes for end-to-end tests: start, await ready, stop, kill."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from chatd.settings import Settings
from tests.servers import free_port


async def created(
    session: aiohttp.ClientSession, url: str, body: object = None, timeout: float = 30.0
) -> dict[str, Any]:
    """POST ``url`` until it answers 201 and return the answer's JSON.

    A 503 is retried after its Retry-After (at most a second), as a client would, until
    ``timeout``; any other status fails the test with the status and the body, so a setup step
    that meets a loaded machine waits, and one that meets a bug says which.
    """
    deadline = time.monotonic() + timeout
    while True:
        async with session.post(url, json=body) as response:
            if response.status == 201:
                return dict(await response.json())
            text = await response.text()
            assert response.status == 503 and time.monotonic() < deadline, f"POST {url}: {response.status} {text}"
            retry_after = float(response.headers.get("Retry-After", "1"))
        await asyncio.sleep(min(retry_after, 1.0))


async def application_and_chat(session: aiohttp.ClientSession, name: str, base: str = "") -> tuple[str, int]:
    """A new application and its first chat, created over a process's HTTP API: (token, chat)."""
    token = str((await created(session, f"{base}/applications", {"application": {"name": name}}))["token"])
    chat = int((await created(session, f"{base}/applications/{token}/chats"))["number"])
    return token, chat


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``CHATD_*`` variables that reproduce ``settings`` in a child process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHATD_")}
    for name, value in vars(settings).items():
        if value is not None:
            env["CHATD_" + name.upper()] = str(value)
    return env


async def await_ready(
    process: subprocess.Popen[bytes], url: str, log_path: Path, what: str, timeout: float = 30.0
) -> None:
    """Poll ``url``/readyz until it answers 200; raise with the end of the log if ``process`` exits or times out."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited at start:\n{log_path.read_text()[-3000:]}")
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready:\n{log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.1)


class ChatdProcess:
    def __init__(self, settings: Settings, role: str, log_dir: Path, port: int | None = None):
        self.settings = settings
        self.log_dir = log_dir
        self.role = role
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = settings_env(settings.replace(role=role, port=self.port, host="127.0.0.1"))
        self.log_path = log_dir / f"chatd-{role}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def like(cls, other: ChatdProcess) -> ChatdProcess:
        """A new process with the same settings and role (on a new port)."""
        return cls(other.settings, other.role, other.log_dir)

    async def start(self, timeout: float = 30.0) -> ChatdProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            await await_ready(self.process, self.url, self.log_path, f"chatd {self.role}", timeout)
        except BaseException:
            # Not ready is of no use to anyone, and nobody else would stop it: a process left
            # serving (a start that timed out) outlives the test run and loads the machine.
            self.stop_quietly()
            raise
        return self

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, and the exit code once it is gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError(f"chatd {self.role} did not exit in {timeout}s")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)

    async def __aenter__(self) -> ChatdProcess:
        """``async with ChatdProcess(...) as process``: started, and killed on the way out."""
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop_quietly()

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
