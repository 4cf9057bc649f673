"""The load clients: wrk with bench/post_messages.lua, and ab as the reference design runs it.

Both are C programs from Debian (``wrk``, ``apache2-utils``), run as subprocesses. A Python client
on the same two cores would spend more CPU per request than the server it measures and cap the
figures at its own speed; wrk and ab spend a small fraction of that.

Every result keeps the responses that were *not* 2xx apart: a 503 answered in a millisecond is not
throughput, so the rates here count successful responses only.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).with_name("post_messages.lua")


class LoadToolError(RuntimeError):
    """wrk or ab failed or printed something this module cannot read."""


@dataclass(frozen=True)
class WrkResult:
    duration_s: float
    requests: int  # completed responses, whatever their status
    non_2xx: int  # responses with status >= 400 (wrk's "status errors")
    socket_errors: int  # connect, read, write errors and timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.duration_s


@dataclass(frozen=True)
class AbResult:
    requests: int
    non_2xx: int
    failed: int  # connect, receive and exception failures (not "Length": see parse_ab)
    req_per_s: float  # as ab prints it: every completed request, whatever its status
    p50_ms: float
    p99_ms: float

    @property
    def ok_per_s(self) -> float:
        return self.req_per_s * (self.requests - self.non_2xx) / max(1, self.requests)


def require_tools() -> None:
    missing = [tool for tool in ("wrk", "ab") if shutil.which(tool) is None]
    if missing:
        raise LoadToolError(f"missing {', '.join(missing)}: `make bench` installs wrk and apache2-utils")


async def _run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise LoadToolError(f"{argv[0]} exited {process.returncode}: {stderr.decode()[-2000:]}")
    return stdout.decode()


async def wrk_json(
    script: Path, base_url: str, script_args: list[str], *, seconds: float, connections: int, threads: int = 1
) -> dict[str, Any]:
    """Run wrk with a Lua ``script`` whose done() prints one ``BENCH_JSON {...}`` line; that line, parsed."""
    output = await _run(
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        # Past wrk's default of 2 s a slow response counts as a timeout and vanishes from the
        # latency figures; a benchmark wants to see it in the p99 instead.
        "--timeout=30s",
        "-s",
        str(script),
        base_url,
        "--",
        *script_args,
    )
    match = re.search(r"^BENCH_JSON (\{.*\})$", output, re.MULTILINE)
    if match is None:
        raise LoadToolError(f"wrk printed no BENCH_JSON line:\n{output[-2000:]}")
    data: dict[str, Any] = json.loads(match.group(1))
    return data


async def wrk(
    base_url: str, token: str, chats: int, word: str, *, seconds: float, connections: int, threads: int
) -> WrkResult:
    """POST messages to ``chats`` chats of ``token`` for ``seconds`` (see post_messages.lua)."""
    data = await wrk_json(
        LUA_SCRIPT, base_url, [token, str(chats), word], seconds=seconds, connections=connections, threads=threads
    )
    return wrk_result(data)


def wrk_result(data: dict[str, Any]) -> WrkResult:
    """The WrkResult of a script's BENCH_JSON line (bench/post_messages.lua's fields)."""
    return WrkResult(
        duration_s=data["duration_us"] / 1e6,
        requests=data["requests"],
        non_2xx=data["status_errors"],
        socket_errors=sum(data[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts")),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


async def ab(url: str, body: Path, *, requests: int, concurrency: int) -> AbResult:
    """``ab -n requests -c concurrency -p body -T application/json url``, as the reference design runs it."""
    output = await _run(
        "ab", "-q", "-n", str(requests), "-c", str(concurrency), "-p", str(body), "-T", "application/json", url
    )
    return parse_ab(output)


def parse_ab(output: str) -> AbResult:
    def number(label: str, default: float | None = None) -> float:
        match = re.search(rf"^{label}:\s+([\d.]+)", output, re.MULTILINE)
        if match is None:
            if default is None:
                raise LoadToolError(f"ab printed no {label!r}:\n{output[-2000:]}")
            return default
        return float(match.group(1))

    def percentile(percent: int) -> float:
        match = re.search(rf"^\s+{percent}%\s+(\d+)", output, re.MULTILINE)
        if match is None:
            raise LoadToolError(f"ab printed no {percent}% line:\n{output[-2000:]}")
        return float(match.group(1))

    # ab counts a body whose length differs from the first one's as a failed request, and
    # {"number": 9} is shorter than {"number": 10}: only the other kinds are failures here.
    kinds = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)", output)
    return AbResult(
        requests=int(number("Complete requests")),
        # ab prints this line only when there were any.
        non_2xx=int(number("Non-2xx responses", 0)),
        failed=sum(int(n) for n in kinds.groups()) if kinds else int(number("Failed requests")),
        req_per_s=number("Requests per second"),
        p50_ms=percentile(50),
        p99_ms=percentile(99),
    )
