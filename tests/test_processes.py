"""End to end: separate api and worker processes under concurrent load, then SIGTERM."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import aiohttp

from tests.conftest import Namespace
from tests.factories import eventually
from tests.processes import ChatdProcess

FAST = {"reconcile_interval_seconds": 0.5, "index_batch_wait_seconds": 0.2}


async def start_processes(namespace: Namespace, tmp_path: Path, apis: int, workers: int) -> list[ChatdProcess]:
    settings = await namespace.serving_settings(**FAST)
    processes = [ChatdProcess(settings, "api", tmp_path) for _ in range(apis)]
    processes += [ChatdProcess(settings, "worker", tmp_path) for _ in range(workers)]
    for process in processes:  # one at a time: the first applies the embedded migrations
        await process.start()
    return processes


async def test_two_apis_and_two_workers_number_store_and_index_everything(namespace: Namespace, tmp_path: Path) -> None:
    processes = await start_processes(namespace, tmp_path, apis=2, workers=2)
    api_urls = [p.url for p in processes if p.role == "api"]
    total = 2000 if namespace.backend_set == "real" else 800
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            response = await session.post(f"{api_urls[0]}/applications", json={"application": {"name": "Load"}})
            token = (await response.json())["token"]
            chats = []
            for index in range(4):
                async with session.post(f"{api_urls[index % 2]}/applications/{token}/chats") as response:
                    chats.append((await response.json())["number"])
            assert sorted(chats) == [1, 2, 3, 4]

            async def send(index: int) -> tuple[int, int]:
                chat = chats[index % 4]
                url = f"{api_urls[index % 2]}/applications/{token}/chats/{chat}/messages"
                async with session.post(url, json={"content": f"load message {index}"}) as response:
                    assert response.status == 201, await response.text()
                    return chat, (await response.json())["number"]

            results = await asyncio.gather(*(send(index) for index in range(total)))
            numbers: dict[int, list[int]] = defaultdict(list)
            for chat, number in results:
                numbers[chat].append(number)
            for chat in chats:
                assert sorted(numbers[chat]) == list(range(1, total // 4 + 1))

            async def all_stored_searchable_counted() -> bool:
                for chat in chats:
                    base = f"{api_urls[1]}/applications/{token}/chats/{chat}"
                    async with session.get(base) as response:
                        if (await response.json()).get("messages_count") != total // 4:
                            return False
                    async with session.get(f"{base}/messages/search?query=load&per_page=1") as response:
                        if (await response.json()).get("total") != total // 4:
                            return False
                    async with session.get(f"{base}/messages?per_page=1") as response:
                        if (await response.json())["meta"]["total"] != total // 4:
                            return False
                return True

            await eventually(all_stored_searchable_counted, timeout=120, interval=0.5)
            async with session.get(f"{api_urls[0]}/applications/{token}") as response:
                assert (await response.json())["chats_count"] == 4
        for process in processes:
            assert await process.terminate() == 0, process.log_path.read_text()[-2000:]
    finally:
        for process in processes:
            process.stop_quietly()


async def test_reference_curl_script(namespace: Namespace, tmp_path: Path) -> None:
    """The reference design's "Testing the System" script, run as written against `chatd serve`."""
    assert shutil.which("curl") and shutil.which("jq"), "make test installs curl and jq"
    processes = await start_processes(namespace, tmp_path, apis=1, workers=1)
    script = Path(__file__).parent / "reference_flow.sh"
    try:
        result = subprocess.run(["bash", str(script), processes[0].url], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Chat Number: 1" in result.stdout and "Message Number: 1" in result.stdout
        assert '"content": "Hello from the test!"' in result.stdout
    finally:
        for process in processes:
            process.stop_quietly()


async def test_api_processes_share_one_port_with_reuse_port(namespace: Namespace, tmp_path: Path) -> None:
    """CHATD_REUSE_PORT=1: a second api process binds the first's port, and serves it once the first is gone."""
    settings = await namespace.serving_settings(**FAST, reuse_port=True)
    first = await ChatdProcess(settings, "api", tmp_path).start()
    second = ChatdProcess(settings, "api", tmp_path, port=first.port)
    try:
        await second.start()  # answered by the first: the second may still be starting
        # Without SO_REUSEPORT the second exits (EADDRINUSE) and this fails.
        await eventually(lambda: _listeners(first.port, 2), timeout=20.0)
        async with aiohttp.ClientSession() as session:
            response = await session.post(f"{first.url}/applications", json={"application": {"name": "one port"}})
            token = (await response.json())["token"]
            first.kill()
            chats = f"{second.url}/applications/{token}/chats"
            for _ in range(5):  # new connections: the kernel gives them all to the one left
                async with aiohttp.ClientSession() as fresh, fresh.post(chats) as response:
                    assert response.status == 201
    finally:
        first.stop_quietly()
        second.stop_quietly()


async def _listeners(port: int, count: int) -> bool:
    """Whether ``count`` sockets listen on ``port`` (``ss``, from iproute2)."""
    listed = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
    return len(listed.stdout.splitlines()) == count
