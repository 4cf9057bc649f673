"""A load client holding many SSE subscribers: ``python -m bench.live.subscribers``.

Python, in a process of its own (the bench starts several): no packaged tool holds thousands of
Server-Sent Events streams and checks what each received. Each connection reads its chat's
events and checks they come in number order, each once. It prints JSON lines on stdout:
``{"connected": n}`` once every stream is open, then ``{"done": ...}`` when every stream has
received ``--expect`` events (or at ``--deadline``), and exits when its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp


class Stream:
    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.in_order = True


async def follow(
    session: aiohttp.ClientSession, path: str, stream: Stream, opened: asyncio.Queue[bool], window: asyncio.Semaphore
) -> None:
    async with window:  # released once the stream is open: a bounded number of connects in flight
        response = await session.get(path, timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    async with response:
        await opened.put(response.status == 200)
        if response.status != 200:
            return
        async for line in response.content:
            if line.startswith(b"data: "):
                number = json.loads(line[6:])["number"]
                if stream.numbers and number <= stream.numbers[-1]:
                    stream.in_order = False
                stream.numbers.append(number)


async def run(args: argparse.Namespace) -> None:
    chats = [int(c) for c in args.chats.split(",")]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    streams = [Stream() for _ in range(args.count)]
    opened: asyncio.Queue[bool] = asyncio.Queue()
    async with aiohttp.ClientSession(args.url, connector=connector) as session:
        # Connects in flight stay under the server's listen backlog (aiohttp's 128): a SYN
        # dropped from a full queue is retried a second later and would time the client, not chatd.
        window = asyncio.Semaphore(64)
        tasks = []
        for index, stream in enumerate(streams):
            path = f"/applications/{args.token}/chats/{chats[index % len(chats)]}/events?after=0"
            tasks.append(asyncio.create_task(follow(session, path, stream, opened, window)))
        ok = sum([await opened.get() for _ in streams])
        print(json.dumps({"connected": ok}), flush=True)
        started = time.monotonic()
        while time.monotonic() - started < args.deadline:
            if all(len(s.numbers) >= args.expect for s in streams):
                break
            await asyncio.sleep(0.1)
        complete = sum(1 for s in streams if s.numbers == list(range(1, args.expect + 1)))
        summary = {
            "done": True,
            "complete": complete,
            "streams": len(streams),
            "received": sum(len(s.numbers) for s in streams),
            "out_of_order": sum(1 for s in streams if not s.in_order),
            "seconds": round(time.monotonic() - started, 3),
        }
        print(json.dumps(summary), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for task in tasks:
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--chats", required=True, help="chat numbers, comma-separated; streams go round them")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--expect", type=int, required=True, help="messages each chat will get")
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
