"""Rotating and revoking an application's token, in one process, on both backend sets.

The cross-process bounds (every api process within a second) are in ``test_token_processes.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatd.service import utc_now
from tests.conftest import Api


async def _rotate(api: Api, token: str, body: object = None, status: int = 201, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    response = await api.client.post(f"/applications/{token}/tokens", json=body, headers=headers or {})
    assert response.status == status, await response.text()
    return await response.json() if response.content_type == "application/json" else None


async def test_a_rotated_token_works_through_its_grace_and_never_shows_the_new_one(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(open_listing=True)
    old = await api.create_application("rotating")
    chat = await api.create_chat(old)
    first = await api.create_message(old, chat, "before the rotation", idempotency_key="k1")
    before = datetime.now(UTC)
    rotated = await _rotate(api, old, {"grace_seconds": 3600})
    new = rotated["token"]
    assert new != old and len(new) >= 32
    expires = datetime.fromisoformat(rotated["previous_token_expires_at"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=3599) <= expires <= datetime.now(UTC) + timedelta(seconds=3601)

    # Both tokens read and write the same application; nothing is renumbered.
    assert await api.create_message(new, chat, "with the new token") == first + 1
    assert await api.create_message(old, chat, "with the old token") == first + 2
    assert await api.create_chat(old) == chat + 1
    # An idempotency key belongs to the application, whichever token sends it again.
    assert await api.create_message(new, chat, "before the rotation", idempotency_key="k1") == first
    await api.settle()
    assert (await api.get_json(f"/applications/{new}/chats/{chat}/messages/{first}"))[
        "content"
    ] == "before the rotation"
    # Each token is answered with itself: the old one never reveals its replacement.
    assert (await api.get_json(f"/applications/{old}"))["token"] == old
    assert (await api.get_json(f"/applications/{new}"))["token"] == new
    renamed = await api.client.patch(f"/applications/{old}", json={"application": {"name": "renamed"}})
    assert renamed.status == 200 and (await renamed.json())["token"] == old
    listed = await api.get_json("/applications?per_page=100")
    tokens = {item["token"] for item in listed["data"]}
    assert new in tokens and old not in tokens
    # The old token cannot rotate: it would hand its holder the new one.
    refused = await _rotate(api, old, status=403)
    assert refused["error"]["code"] == "token_superseded"
    assert new not in str(refused)

    # Past its grace period the old token is unknown, like any other.
    api.service.clock = lambda: utc_now() + timedelta(seconds=3601)
    for path in (f"/applications/{old}", f"/applications/{old}/chats/{chat}/messages"):
        gone = await api.get_json(path, status=404)
        assert gone["error"]["code"] == "application_not_found"
    response = await api.client.post(f"/applications/{old}/chats/{chat}/messages", json={"content": "late"})
    assert response.status == 404
    assert await api.create_message(new, chat, "after the grace period") == first + 3


async def test_grace_zero_revokes_at_once_and_a_second_rotation_revokes_the_first_old_token(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api()
    first = await api.create_application()
    second = (await _rotate(api, first, {"grace_seconds": 0}))["token"]
    assert (await api.get_json(f"/applications/{first}", status=404))["error"]["code"] == "application_not_found"
    third = (await _rotate(api, second))["token"]  # the default grace: a day
    await api.get_json(f"/applications/{second}")
    fourth = (await _rotate(api, third, {"grace_seconds": 60}))["token"]
    # Only one previous token at a time: the second rotation revoked the first one's old token.
    await api.get_json(f"/applications/{second}", status=404)
    await api.get_json(f"/applications/{third}")
    await api.get_json(f"/applications/{fourth}")


async def test_revoking_the_previous_token(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(admin_token="a" * 40)
    old = await api.create_application()
    new = (await _rotate(api, old))["token"]
    chat = await api.create_chat(old)
    # The previous token cannot revoke (nor can a wrong admin token).
    response = await api.client.delete(f"/applications/{old}/tokens/previous")
    assert response.status == 403
    response = await api.client.delete(
        f"/applications/{new}/tokens/previous", headers={"Authorization": "Bearer wrong"}
    )
    assert response.status == 401
    await api.get_json(f"/applications/{old}")
    response = await api.client.delete(
        f"/applications/{new}/tokens/previous", headers={"Authorization": "Bearer " + "a" * 40}
    )
    assert response.status == 204
    assert (await api.get_json(f"/applications/{old}", status=404))["error"]["code"] == "application_not_found"
    response = await api.client.post(f"/applications/{old}/chats/{chat}/messages", json={"content": "x"})
    assert response.status == 404
    # Nothing left to revoke: still 204; an unknown token: 404.
    assert (await api.client.delete(f"/applications/{new}/tokens/previous")).status == 204
    assert (await api.client.delete(f"/applications/{'z' * 32}/tokens/previous")).status == 404


async def test_rotation_bodies(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(max_token_grace_seconds=600)
    token = await api.create_application()
    for body in ({"grace_seconds": -1}, {"grace_seconds": 601}, {"grace_seconds": "60"}, {"grace_seconds": True}):
        refused = await _rotate(api, token, body, status=422)
        assert refused["error"]["code"] == "invalid_field"
    response = await api.client.post(f"/applications/{token}/tokens", data=b"[1]")
    assert response.status == 400 and (await response.json())["error"]["code"] == "malformed_json"
    assert (await _rotate(api, "unknown-token-" + "x" * 20, status=404))["error"]["code"] == "application_not_found"
    rotated = await _rotate(api, token, {"grace_seconds": 600})
    assert rotated["token"] != token


async def test_rotation_and_revocation_are_logged_by_id_and_counted(make_api, caplog) -> None:  # type: ignore[no-untyped-def]
    from chatd import metrics

    def counted(kind: str) -> float:
        return metrics.TOKEN_CHANGES.labels(kind)._value.get()  # type: ignore[attr-defined,no-any-return]

    api: Api = await make_api()
    old = await api.create_application()
    app_id = (await api.service.application(old)).id
    before = {kind: counted(kind) for kind in ("rotated", "rotated_and_revoked", "revoked")}
    with caplog.at_level("INFO", logger="chatd.service"):
        new = (await _rotate(api, old))["token"]
        assert (await api.client.delete(f"/applications/{new}/tokens/previous")).status == 204
        newest = (await _rotate(api, new, {"grace_seconds": 0}))["token"]
    records = [r for r in caplog.records if r.name == "chatd.service" and "token" in r.getMessage()]
    assert [r.getMessage() for r in records] == [
        "application token rotated",
        "application token revoked",
        "application token rotated and revoked",
    ]
    assert all(getattr(r, "application_id", None) == app_id for r in records)
    logged = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert old not in logged and new not in logged and newest not in logged
    assert {kind: counted(kind) - before[kind] for kind in before} == {
        "rotated": 1, "rotated_and_revoked": 1, "revoked": 1,
    }  # fmt: skip


async def test_a_websocket_opened_with_a_revoked_token_is_closed_with_4001(make_api) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import aiohttp

    api: Api = await make_api()
    old = await api.create_application()
    chat = await api.create_chat(old)
    new = (await _rotate(api, old))["token"]
    websocket = await api.client.ws_connect(f"/applications/{old}/chats/{chat}/events")
    current = await api.client.ws_connect(f"/applications/{new}/chats/{chat}/events")
    assert (await api.client.delete(f"/applications/{new}/tokens/previous")).status == 204
    async with asyncio.timeout(10):  # the watch looks every second
        message = await websocket.receive()
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert websocket.close_code == 4001
    # The stream opened with the current token goes on: a new message reaches it.
    number = await api.create_message(new, chat, "still here")
    await api.settle()
    async with asyncio.timeout(10):
        event = await current.receive_json()
    assert event["event"] == "message.created" and event["data"]["number"] == number
    await current.close()
