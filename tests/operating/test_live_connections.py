"""chatd_live_connections counts the open live-event streams, SSE and WebSocket apart."""

from __future__ import annotations

from tests.conftest import Api
from tests.factories import eventually
from tests.operating.scrape import scrape, value


async def test_open_live_connections_are_counted_by_transport(api: Api) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.settle()
    before = await scrape(api.client)

    async def open_now(transport: str) -> float:
        samples = await scrape(api.client)
        return value(samples, "chatd_live_connections", transport=transport) - value(
            before, "chatd_live_connections", transport=transport
        )

    sse = await api.client.get(f"/applications/{token}/chats/{chat}/events")
    assert sse.status == 200
    websocket = await api.client.ws_connect(f"/applications/{token}/events")
    assert await eventually(lambda: open_now("sse")) == 1
    assert await eventually(lambda: open_now("websocket")) == 1

    await websocket.close()
    sse.close()

    async def all_closed() -> bool:
        return await open_now("sse") == 0 and await open_now("websocket") == 0

    assert await eventually(all_closed, timeout=30)
