"""A flood of message creations by wrk (tests/faults/flood.lua), and the resident memory of a process.

wrk is a C program from Debian (`make bench-tools`): a Python client on the same two cores would
spend more CPU per request than the api it floods and never reach three times its capacity.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("flood.lua")


@dataclass(frozen=True)
class Flood:
    seconds: float
    requests: int
    created: int  # 201
    unavailable: int  # 503
    answers_500: int  # any other 5xx
    other: int  # anything else (4xx)
    late: int  # answers that took longer than the ``late`` threshold
    timeouts: int  # wrk's own count (connections whose last request is older than --timeout; see flood.lua)
    socket_errors: int  # connect, read and write errors
    slowest_seconds: float
    p99_seconds: float

    @property
    def created_per_second(self) -> float:
        return self.created / self.seconds

    def line(self) -> str:
        return (
            f"{self.requests} answers in {self.seconds:.1f} s: 201 {self.created}, 503 {self.unavailable}, "
            f"5xx {self.answers_500}, other {self.other}; late {self.late} (wrk's timeout count {self.timeouts}), "
            f"socket errors {self.socket_errors}; p99 {self.p99_seconds:.2f} s, slowest {self.slowest_seconds:.2f} s"
        )


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is missing: `make bench-tools` installs it")


async def flood(
    api_url: str,
    token: str,
    chat: int,
    *,
    seconds: float,
    connections: int,
    timeout: float,
    delay_ms: float = 0.0,
    threads: int = 2,
) -> Flood:
    """``connections`` connections POST messages to ``chat`` for ``seconds``, each ``delay_ms`` apart.

    An answer slower than ``timeout`` seconds is late; wrk keeps answers up to twice that in its
    histogram, so the late ones are counted rather than dropped.
    """
    require_wrk()
    process = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={2 * timeout:g}s",
        "-s",
        str(SCRIPT),
        api_url,
        "--",
        token,
        str(chat),
        f"{delay_ms:.0f}",
        str(round(timeout * 1e6)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    output = stdout.decode()
    match = re.search(r"^FLOOD_JSON (\{.*\})$", output, re.MULTILINE)
    assert process.returncode == 0 and match, f"wrk: {process.returncode}\n{output[-2000:]}\n{stderr.decode()[-2000:]}"
    data = json.loads(match.group(1))
    return Flood(
        seconds=data["duration_us"] / 1e6,
        requests=data["requests"],
        created=data["s201"],
        unavailable=data["s503"],
        answers_500=data["s500"],
        other=data["sother"],
        late=data["late"],
        timeouts=data["timeouts"],
        socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"],
        slowest_seconds=data["latency_max_us"] / 1e6,
        p99_seconds=data["p99_us"] / 1e6,
    )


async def capacity(api_url: str, token: str, chat: int, *, seconds: float = 3.0, timeout: float = 6.0) -> float:
    """Messages created a second by one api process under wrk -c64 (as `make bench` measures acceptance)."""
    measured = await flood(api_url, token, chat, seconds=seconds, connections=64, timeout=timeout, threads=1)
    return measured.created_per_second
