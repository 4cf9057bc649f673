"""At SIGTERM each role logs what it finished, retried and left queued, and exits 0; at start
it logs its settings with the secrets masked. Real `chatd serve` processes on both backend sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import Namespace
from tests.factories import eventually
from tests.operating.scrape import parse, value
from tests.processes import ChatdProcess, application_and_chat

ADMIN_TOKEN = "admin-token-never-logged"


def _log(process: ChatdProcess) -> list[dict[str, Any]]:
    lines = []
    for line in process.log_path.read_bytes().splitlines():
        try:
            lines.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pass  # not ours (a library printing)
    return lines


def _one(lines: list[dict[str, Any]], message: str) -> dict[str, Any]:
    found = [line for line in lines if line.get("message") == message]
    assert len(found) == 1, [line.get("message") for line in lines]
    return found[0]


async def test_each_role_reports_what_it_finished_and_left_queued(namespace: Namespace, tmp_path: Path) -> None:
    settings = await namespace.serving_settings(admin_token=ADMIN_TOKEN, reconcile_interval_seconds=0.5)
    api = await ChatdProcess(settings, "api", tmp_path).start()
    worker = ChatdProcess(settings, "worker", tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            token, chat = await application_and_chat(session, "Report", api.url)
            for index in range(3):
                url = f"{api.url}/applications/{token}/chats/{chat}/messages"
                async with session.post(url, json={"content": f"report {index}"}) as response:
                    assert response.status == 201
        # No worker yet: the api leaves the chat and the three messages queued.
        assert await api.terminate() == 0, api.log_path.read_text()[-2000:]
        api_log = _log(api)
        report = _one(api_log, "shutdown report")["report"]
        assert report["role"] == "api"
        assert report["requests_answered"] >= 5
        assert report["numbers_handed_out"] == {"chat": 1, "message": 3}
        assert report["left_queued"] == {"chats": 1, "messages": 3, "index": 0}
        assert "jobs" not in report  # an api process runs no consumer

        started = _one(api_log, "chatd serve starting")["settings"]
        assert started["role"] == "api" and started["admin_token"] == "***"
        assert ADMIN_TOKEN not in api.log_path.read_text()
        if namespace.backend_set == "real":
            assert ":***@" in started["database_url"] and ":***@" in started["amqp_url"]

        await worker.start()
        async with aiohttp.ClientSession() as session:

            async def indexed() -> bool:
                async with session.get(f"{worker.url}/metrics") as response:
                    samples = parse(await response.text())
                return value(samples, "chatd_jobs_done_total", topic="index") == 3

            await eventually(indexed, timeout=30)
        assert await worker.terminate() == 0, worker.log_path.read_text()[-2000:]
        report = _one(_log(worker), "shutdown report")["report"]
        assert report["role"] == "worker"
        assert report["jobs"] == {
            "chats": {"done": 1, "retried": 0, "dead": 0},
            "messages": {"done": 3, "retried": 0, "dead": 0},
            "index": {"done": 3, "retried": 0, "dead": 0},
        }
        assert report["reconciler_runs"] >= 1
        assert report["left_queued"] == {"chats": 0, "messages": 0, "index": 0}
        assert "requests_answered" not in report
    finally:
        api.stop_quietly()
        worker.stop_quietly()
