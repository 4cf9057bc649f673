"""The live endpoints and the page answer as chatd/openapi.yaml describes them."""

from __future__ import annotations

from tests.api.test_openapi import conforming, expect
from tests.conftest import Api


async def test_live_answers_match_the_description(api: Api) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    events = f"/applications/{token}/chats/{chat}/events"
    await expect(api, "GET", "/applications/nope/chats/1/events", 404, "application_not_found")
    await expect(api, "GET", f"/applications/{token}/chats/9/events", 404, "chat_not_found")
    await expect(api, "GET", "/applications/nope/events", 404, "application_not_found")
    await expect(api, "GET", f"/applications/{token}/chats/x/events", 400, "invalid_parameter")
    await expect(api, "GET", events + "?after=x", 400, "invalid_parameter")
    await expect(api, "GET", events, 400, "invalid_parameter", headers={"Last-Event-ID": "-"})
    for path in (events, f"/applications/{token}/events"):
        response = await api.client.get(path)
        assert response.status == 200 and response.content_type == "text/event-stream"
        response.close()
    assert "API docs" in await conforming(await api.client.get("/"))
    assert "EventSource" in await conforming(await api.client.get("/static/app.js"))
    await expect(api, "GET", "/static/nope.js", 404, "not_found")
