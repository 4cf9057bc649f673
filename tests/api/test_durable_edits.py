"""Edits are as durable as creations (issue 17, item 4), on both backend sets.

An edit commits its new text and its outbox row together; the edit relay publishes the index
job. A broker that refuses the publish delays the search index, never loses the edit for it.
"""

from __future__ import annotations

import pytest

from chatd import keys
from chatd.errors import BackendUnavailable
from tests.conftest import Api


async def search_numbers(api: Api, token: str, chat: int, query: str) -> list[int]:
    found = await api.get_json(f"/applications/{token}/chats/{chat}/messages/search?query={query}")
    return [hit["message_number"] for hit in found["messages"]]


async def test_an_edit_whose_index_job_cannot_be_published_reaches_the_index_once_the_queue_is_back(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.create_message(token, chat, "original wording")
    await api.settle()
    backends = api.app[keys.BACKENDS]
    queue = backends.queue
    refused: list[str] = []

    async def broker_down(topic: str, bodies: object) -> None:
        refused.append(topic)
        raise BackendUnavailable("broker down (test)", backend="rabbitmq", cause="connection")

    with monkeypatch.context() as down:
        down.setattr(queue, "publish", broker_down)
        edit = await api.client.put(f"/applications/{token}/chats/{chat}/messages/1", json={"content": "revised text"})
        # Stored with its outbox row in one transaction: the edit is done, its indexing follows.
        assert edit.status == 200, await edit.text()
        assert (await edit.json())["revision"] == 2
        with pytest.raises(BackendUnavailable):
            await api.pipeline.edit_relay.relay_once()
        assert refused == ["index"]
        await backends.search.refresh()
        assert await search_numbers(api, token, chat, "revised") == []  # behind while the broker is down
        assert len((await backends.store.edits_to_relay(10)).ids) == 1  # kept for the next pass

    await api.settle()  # the broker is back: the relay publishes, the indexer indexes
    assert await search_numbers(api, token, chat, "revised") == [1]
    assert await search_numbers(api, token, chat, "original") == []
    message = await api.get_json(f"/applications/{token}/chats/{chat}/messages/1")
    assert message["content"] == "revised text"
    assert (await backends.store.edits_to_relay(10)).ids == []  # relayed, then forgotten
