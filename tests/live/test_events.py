"""Live events over SSE and WebSocket, on both backend sets: order, resume, errors, edits."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from chatd import keys
from tests.conftest import Api
from tests.factories import eventually
from tests.live.helpers import SseStream, WsStream, numbers


async def _chat(api: Api) -> tuple[str, int]:
    token = await api.create_application()
    return token, await api.create_chat(token)


async def _post(api: Api, token: str, chat: int, count: int, prefix: str = "m") -> list[int]:
    return [await api.create_message(token, chat, f"{prefix} {i}") for i in range(count)]


async def test_sse_streams_stored_messages_in_order(api: Api) -> None:
    token, chat = await _chat(api)
    response = await api.client.get(f"/applications/{token}/chats/{chat}/events")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    stream = SseStream(response)
    posted = await _post(api, token, chat, 3, "hello live")
    await api.settle()
    events = await stream.take(3)
    assert [e.event for e in events] == ["message.created"] * 3
    assert numbers(events) == posted == [1, 2, 3]
    assert [e.id for e in events] == ["1", "2", "3"]
    assert events[0].data["content"] == "hello live 0" and events[0].data["created_at"].endswith("Z")
    # Sent once stored: each one can be fetched.
    assert (await api.get_json(f"/applications/{token}/chats/{chat}/messages/3"))["content"] == "hello live 2"


async def test_resume_after_last_event_id_replays_then_goes_live(api: Api) -> None:
    token, chat = await _chat(api)
    await _post(api, token, chat, 5)
    await api.settle()
    path = f"/applications/{token}/chats/{chat}/events"
    by_header = SseStream(await api.client.get(path, headers={"Last-Event-ID": "2"}))
    by_query = SseStream(await api.client.get(path + "?after=3"))
    assert numbers(await by_header.take(3)) == [3, 4, 5]
    assert numbers(await by_query.take(2)) == [4, 5]
    await _post(api, token, chat, 2)
    await api.settle()
    assert numbers(await by_header.take(2)) == [6, 7]
    assert numbers(await by_query.take(2)) == [6, 7]


async def test_no_gap_or_duplicate_when_messages_arrive_during_replay(api: Api) -> None:
    # More stored messages than one replay page (500), and more arriving while it is read.
    token, chat = await _chat(api)
    await asyncio.gather(*(api.create_message(token, chat, f"before {i}") for i in range(700)))
    await api.settle()
    stream = SseStream(await api.client.get(f"/applications/{token}/chats/{chat}/events?after=0"))
    first = await stream.take(10)

    async def more() -> None:
        for round_ in range(6):
            await asyncio.gather(*(api.create_message(token, chat, f"during {round_} {i}") for i in range(50)))
            await api.settle()

    writer = asyncio.create_task(more())
    rest = await stream.take(700 + 300 - 10)
    await writer
    assert numbers(first + rest) == list(range(1, 1001))


async def test_a_new_subscriber_starts_after_the_last_number_handed_out(api: Api) -> None:
    token, chat = await _chat(api)
    await _post(api, token, chat, 2)
    await api.settle()
    stream = SseStream(await api.client.get(f"/applications/{token}/chats/{chat}/events"))
    await _post(api, token, chat, 1)
    await api.settle()
    assert numbers(await stream.take(1)) == [3]


async def test_websocket_streams_created_and_updated(api: Api) -> None:
    token, chat = await _chat(api)
    websocket = await api.client.ws_connect(f"/applications/{token}/chats/{chat}/events?after=0")
    stream = WsStream(websocket)
    await _post(api, token, chat, 2, "hello ws")
    await api.settle()
    created = await stream.take(2)
    assert [(e.id, e.event, e.data["content"]) for e in created] == [
        ("1", "message.created", "hello ws 0"),
        ("2", "message.created", "hello ws 1"),
    ]
    edit = await api.client.put(f"/applications/{token}/chats/{chat}/messages/1", json={"content": "edited"})
    assert edit.status == 200
    updated = await stream.next()
    assert updated.event == "message.updated" and updated.id == "2"
    assert updated.data["number"] == 1 and updated.data["content"] == "edited"
    assert updated.data["revision"] == (await edit.json())["revision"] and updated.data["updated_at"].endswith("Z")
    await websocket.close()


async def test_application_events_announce_chats(api: Api) -> None:
    token = await api.create_application()
    first = await api.create_chat(token)
    await api.settle()
    stream = SseStream(await api.client.get(f"/applications/{token}/events?after=0"))
    second = await api.create_chat(token)
    await api.settle()
    events = await stream.take(2)
    assert [(e.event, e.id) for e in events] == [("chat.created", str(first)), ("chat.created", str(second))]
    assert events[1].data["number"] == second and events[1].data["created_at"].endswith("Z")


async def test_tenants_see_only_their_own_chats(api: Api) -> None:
    mine, chat = await _chat(api)
    theirs, their_chat = await _chat(api)
    assert chat == their_chat == 1
    stream = SseStream(await api.client.get(f"/applications/{mine}/chats/{chat}/events"))
    await _post(api, theirs, their_chat, 2, "not yours")
    await _post(api, mine, chat, 1, "yours")
    await api.settle()
    event = await stream.next()
    assert event.data["content"] == "yours 0"


async def test_errors_come_before_the_stream_starts(api: Api) -> None:
    token, chat = await _chat(api)
    cases = [
        ("/applications/nope/chats/1/events", {}, 404, "application_not_found"),
        (f"/applications/{token}/chats/9/events", {}, 404, "chat_not_found"),
        ("/applications/nope/events", {}, 404, "application_not_found"),
        (f"/applications/{token}/chats/0/events", {}, 400, "invalid_parameter"),
        (f"/applications/{token}/chats/{chat}/events?after=-1", {}, 400, "invalid_parameter"),
    ]
    # Resume points are numbers as every other is: ASCII digits within the store's range. Not a
    # superscript (int() refuses it: was a 500), not another script's digits (int() reads "١٢" as
    # 12: was a stream), not 30 digits (was a stream whose feed failed for every subscriber).
    for raw in ("x1", "\u00b2", "\u0661\u0662", "1" * 30, "-1", "1.5", "1e3", "0x10"):
        # The header as UTF-8 bytes, and as one byte a character where Latin-1 has it ("²" is 0xB2).
        for sent in {raw.encode().decode("latin-1"), raw.encode("latin-1", "replace").decode("latin-1")}:
            cases.append(
                (f"/applications/{token}/chats/{chat}/events", {"Last-Event-ID": sent}, 400, "invalid_parameter")
            )
        cases.append((f"/applications/{token}/chats/{chat}/events?after={quote(raw)}", {}, 400, "invalid_parameter"))
        cases.append((f"/applications/{token}/events?after={quote(raw)}", {}, 400, "invalid_parameter"))
    for path, headers, status, code in cases:
        response = await api.client.get(path, headers=headers)
        assert response.status == status, (path, headers)
        assert response.headers["Content-Type"].startswith("application/json")
        assert (await response.json())["error"]["code"] == code, (path, headers)
    refused = await api.client.get("/applications/nope/chats/1/events", headers={"Upgrade": "websocket"})
    assert refused.status == 404


async def test_keep_alive_comments(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(live_keepalive_seconds=0.05)
    token, chat = await _chat(api)
    response = await api.client.get(f"/applications/{token}/chats/{chat}/events")
    lines = []
    async with asyncio.timeout(30):
        while b": keep-alive\n" not in lines:
            lines.append(await response.content.readline())
    assert lines[:2] == [b"retry: 1000\n", b": connected\n"]


async def test_an_event_id_is_never_empty_when_the_first_event_is_an_edit(api: Api) -> None:
    # By the SSE standard an empty id resets the browser's last event id: its next reconnect
    # would start from the head and skip everything in between.
    token, chat = await _chat(api)
    await _post(api, token, chat, 2)
    await api.settle()
    path = f"/applications/{token}/chats/{chat}/events"
    sse = await api.client.get(path)
    raw_lines: list[bytes] = []
    websocket = WsStream(await api.client.ws_connect(path))
    hub = api.app[keys.HUB]
    await eventually(lambda: asyncio.sleep(0, hub.subscriber_count == 2))
    edit = await api.client.put(f"{path.removesuffix('/events')}/messages/1", json={"content": "edited first"})
    assert edit.status == 200
    async with asyncio.timeout(30):
        while b"event: message.updated\n" not in raw_lines:
            raw_lines.append(await sse.content.readline())
    # The stream started after the last number handed out (2): that is the id until a message comes.
    assert raw_lines[-2] == b"id: 2\n", raw_lines
    first = await websocket.next()
    assert (first.event, first.id, first.data["content"]) == ("message.updated", "2", "edited first")
    await websocket.websocket.close()
