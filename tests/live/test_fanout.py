"""Fan-out across processes, lost announcements and holes, on both backend sets."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from chatd import keys
from chatd.domain import NumberScope
from chatd.numbering import NumberRequest
from tests.conftest import Api, Namespace
from tests.live.helpers import SseStream, numbers
from tests.processes import ChatdProcess, application_and_chat


async def test_a_worker_process_announces_to_an_api_process(namespace: Namespace, tmp_path: Path) -> None:
    settings = await namespace.serving_settings(index_batch_wait_seconds=0.1)
    api = await ChatdProcess(settings, "api", tmp_path).start()
    worker = await ChatdProcess(settings, "worker", tmp_path).start()
    try:
        async with aiohttp.ClientSession(api.url) as session:
            token, chat = await application_and_chat(session, "Fan-out")
            async with session.get(f"/applications/{token}/chats/{chat}/events") as response:
                stream = SseStream(response)
                for i in range(5):
                    posted = await session.post(
                        f"/applications/{token}/chats/{chat}/messages", json={"content": f"x{i}"}
                    )
                    assert posted.status == 201
                events = await stream.take(5)
        assert numbers(events) == [1, 2, 3, 4, 5]
        assert [e.data["content"] for e in events] == [f"x{i}" for i in range(5)]
    finally:
        api.stop_quietly()
        worker.stop_quietly()


async def test_a_lost_announcement_is_repaired_by_the_next_one(api: Api) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    stream = SseStream(await api.client.get(f"/applications/{token}/chats/{chat}/events"))
    fanout = api.app[keys.FANOUT]
    announce = fanout.announce
    fanout.announce = lambda events: None  # type: ignore[method-assign]
    await api.create_message(token, chat, "lost on the way")
    await api.settle()
    fanout.announce = announce  # type: ignore[method-assign]
    await api.create_message(token, chat, "announced")
    await api.settle()
    events = await stream.take(2)
    assert [(e.id, e.data["content"]) for e in events] == [("1", "lost on the way"), ("2", "announced")]


async def test_a_lost_last_announcement_is_found_by_the_keep_alive_poll(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(live_keepalive_seconds=0.1)
    token = await api.create_application()
    chat = await api.create_chat(token)
    stream = SseStream(await api.client.get(f"/applications/{token}/chats/{chat}/events"))
    api.app[keys.FANOUT].announce = lambda events: None
    await api.create_message(token, chat, "only the store knows")
    await api.settle()
    assert (await stream.next()).data["content"] == "only the store knows"


@pytest.mark.parametrize(("late_seconds", "third_id"), [(300.0, "1"), (0.0, "3")])
async def test_a_number_never_stored_is_skipped_in_order(make_api, late_seconds: float, third_id: str) -> None:  # type: ignore[no-untyped-def]
    # While number 2 may still be stored late, ids stay below it, so a resume replays it;
    # once it is given up (CHATD_LIVE_LATE_SECONDS), the id moves past it.
    api = await make_api(live_hole_wait_seconds=0.2, live_late_seconds=late_seconds)
    token = await api.create_application()
    chat = await api.create_chat(token)
    stream = SseStream(await api.client.get(f"/applications/{token}/chats/{chat}/events"))
    await api.create_message(token, chat, "one")
    await api.settle()
    # A number taken and never stored (its request failed after numbering): a hole.
    application = await api.service.application(token)
    await api.app[keys.BACKENDS].store.take_numbers([NumberRequest(NumberScope(application.id, chat))], 0.0, 60)
    assert await api.create_message(token, chat, "three") == 3
    await api.settle()
    events = await stream.take(2)
    assert [(e.id, e.data["content"]) for e in events] == [("1", "one"), (third_id, "three")]
