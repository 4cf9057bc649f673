"""Role split: an api-only app and a worker-only app, sharing the backends' servers or files."""

from __future__ import annotations

from chatd import keys
from chatd.app import create_app
from tests.conftest import Namespace
from tests.factories import eventually


async def test_api_and_worker_roles_work_together(namespace: Namespace, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    settings = await namespace.settings(reconcile_interval_seconds=0.2, index_batch_wait_seconds=0.1)
    api_app = create_app(settings.replace(role="api"))
    worker_app = create_app(settings.replace(role="worker"))
    if namespace.backend_set == "real":
        backends = await namespace.open_backends()  # migrates, as `chatd migrate` would
        del backends
    api = await aiohttp_client(api_app)
    worker = await aiohttp_client(worker_app)
    assert keys.SUPERVISOR not in api_app
    assert sorted(worker_app[keys.SUPERVISOR].names) == [
        "chat-consumer",
        "edit-relay",
        "indexer",
        "message-consumer",
        "reconciler",
    ]
    # The worker role serves health endpoints only.
    assert (await worker.get("/healthz")).status == 200
    assert (await worker.post("/applications", json={"application": {"name": "x"}})).status == 404

    response = await api.post("/applications", json={"application": {"name": "Split"}})
    token = (await response.json())["token"]
    chat = (await (await api.post(f"/applications/{token}/chats")).json())["number"]
    for text in ("hello split roles", "another hello"):
        await api.post(f"/applications/{token}/chats/{chat}/messages", json={"content": text})

    async def searchable() -> bool:
        found = await (await api.get(f"/applications/{token}/chats/{chat}/messages/search?query=hello")).json()
        return found.get("total") == 2

    async def counted() -> bool:
        body = await (await api.get(f"/applications/{token}/chats/{chat}")).json()
        return body.get("messages_count") == 2

    await eventually(searchable)
    await eventually(counted)

    # An edit in the api process is relayed to the index by the worker process's edit relay.
    edit = await api.put(f"/applications/{token}/chats/{chat}/messages/2", json={"content": "goodbye split roles"})
    assert edit.status == 200

    async def edit_searchable() -> bool:
        found = await (await api.get(f"/applications/{token}/chats/{chat}/messages/search?query=goodbye")).json()
        return [hit["message_number"] for hit in found.get("messages", [])] == [2]

    await eventually(edit_searchable)


async def test_health_endpoints(api) -> None:  # type: ignore[no-untyped-def]
    assert await api.get_json("/healthz") == {"status": "ok", "role": "all"}
    ready = await api.get_json("/readyz")
    assert ready["status"] == "ready" and ready["checks"] and set(ready["checks"].values()) == {"ok"}
    await api.create_application()
    metrics = await (await api.client.get("/metrics")).text()
    assert 'chatd_http_requests_total{method="POST",route="/applications",status="201"}' in metrics
