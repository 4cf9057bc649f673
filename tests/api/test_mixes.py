"""Any mix of backends works: each port is chosen by its own URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REAL, Api

MIXES = {
    # Production without Elasticsearch: the embedded search index next to MySQL, Redis, RabbitMQ.
    "mysql+redis+rabbitmq, embedded search": {"elasticsearch_url": None},
    # The embedded store and queue, with the real cache and search index.
    "embedded store+queue, redis+elasticsearch": {"database_url": None, "amqp_url": None},
}


@pytest.mark.parametrize("backend_set", [REAL])
@pytest.mark.parametrize("mix", list(MIXES))
async def test_a_mix_of_backends_serves_the_whole_flow(make_api, tmp_path: Path, mix: str) -> None:  # type: ignore[no-untyped-def]
    overrides = dict(MIXES[mix])
    if overrides.pop("database_url", "keep") is None:
        overrides["database_url"] = f"sqlite:///{tmp_path}/chatd.db"
    api: Api = await make_api(
        search_path=f"{tmp_path}/search.db",
        embedded_path=f"{tmp_path}/embedded.db",
        **{k: v for k, v in overrides.items()},
    )
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.create_message(token, chat, "mixing backends works")
    await api.settle()
    found = await api.get_json(f"/applications/{token}/chats/{chat}/messages/search?query=mixng")
    assert [m["message_number"] for m in found["messages"]] == [1]
    ready = await api.get_json("/readyz")
    expected_search = "sqlite-search" if "embedded search" in mix else "elasticsearch"
    assert expected_search in ready["checks"] and "redis-cache" in ready["checks"]
    assert ("sqlite" in ready["checks"]) == ("embedded store" in mix)
