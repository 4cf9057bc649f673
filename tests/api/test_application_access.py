"""Who may list and create applications (issue 22): closed unless the operator opens it on purpose.

Each runs on both backend sets. chatd listens on 127.0.0.1 here, as behind nginx on the same host
(the systemd layout), where every client arrives from loopback: where chatd listens or where a
request comes from must not open anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chatd.app import create_app
from chatd.settings import Settings
from tests.conftest import Api, embedded_settings

ADMIN = {"Authorization": "Bearer s3cret"}
FORWARDED = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}


async def unauthorized(response) -> str:  # type: ignore[no-untyped-def]
    """The 401's message, once the answer is chatd's JSON 401 with a Bearer challenge."""
    assert response.status == 401, await response.text()
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error = (await response.json())["error"]
    assert error["code"] == "unauthorized"
    return str(error["message"])


@pytest.mark.parametrize("headers", [{}, FORWARDED], ids=["direct", "forwarded"])
async def test_listing_without_an_admin_token_is_closed_on_loopback_too(make_api, headers: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(host="127.0.0.1")
    token = await api.create_application("Secret")
    response = await api.client.get("/applications", headers=headers)
    message = await unauthorized(response)
    assert "CHATD_ADMIN_TOKEN" in message and "CHATD_OPEN_LISTING" in message, "the answer says how to open it"
    assert token not in await response.text()
    for any_bearer in ("Bearer ", "Bearer None", "Bearer null"):  # no admin token: nothing matches it
        await unauthorized(await api.client.get("/applications", headers={"Authorization": any_bearer}))


async def test_the_development_switch_opens_the_listing(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(open_listing=True)
    token = await api.create_application("Open")
    for headers in ({}, FORWARDED):
        response = await api.client.get("/applications", headers=headers)
        assert response.status == 200
        assert [app["token"] for app in (await response.json())["data"]] == [token]


async def test_the_admin_token_lists_and_wins_over_the_switch(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(admin_token="s3cret", open_listing=True)
    token = await api.create_application("Guarded")
    await unauthorized(await api.client.get("/applications"))
    await unauthorized(await api.client.get("/applications", headers=FORWARDED))
    await unauthorized(await api.client.get("/applications", headers={"Authorization": "Bearer s3cre"}))
    await unauthorized(await api.client.get("/applications", headers={"Authorization": "s3cret"}))
    response = await api.client.get("/applications", headers={**ADMIN, **FORWARDED})
    assert response.status == 200
    assert [app["token"] for app in (await response.json())["data"]] == [token]


async def test_anyone_creates_applications_by_default(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(admin_token="s3cret")
    response = await api.client.post("/applications", json={"application": {"name": "Self-served"}})
    assert response.status == 201


async def test_creating_an_application_can_need_the_admin_token(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(admin_token="s3cret", admin_creates_applications=True)
    body = {"application": {"name": "Vetted"}}
    for headers in ({}, FORWARDED, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        message = await unauthorized(await api.client.post("/applications", json=body, headers=headers))
        assert "creating an application" in message
    # Refused before the body is read: a stranger's bad body is a 401 too, not a 4xx about the body.
    await unauthorized(await api.client.post("/applications", data=b"{nope"))
    created = await api.client.post("/applications", json=body, headers=ADMIN)
    assert created.status == 201, await created.text()
    token = (await created.json())["token"]
    listed = await (await api.client.get("/applications", headers=ADMIN)).json()
    assert [app["token"] for app in listed["data"]] == [token], "nothing the 401s refused was created"
    # Everything under the tenant's own token stays as it was.
    assert (await api.client.post(f"/applications/{token}/chats")).status == 201
    assert (await api.client.get(f"/applications/{token}")).status == 200


def test_admin_created_applications_need_an_admin_token() -> None:
    with pytest.raises(ValueError, match="CHATD_ADMIN_TOKEN"):
        Settings.from_env({"CHATD_ADMIN_CREATES_APPLICATIONS": "1"})
    settings = Settings.from_env({"CHATD_ADMIN_CREATES_APPLICATIONS": "yes", "CHATD_ADMIN_TOKEN": "t"})
    assert settings.admin_creates_applications is True


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("true", True), ("On", True), ("0", False), ("false", False), ("no", False)]
)
def test_switches_read_from_the_environment(raw: str, value: bool) -> None:
    assert Settings.from_env({"CHATD_OPEN_LISTING": raw}).open_listing is value


def test_a_switch_that_is_no_switch_is_refused() -> None:
    with pytest.raises(ValueError, match="CHATD_OPEN_LISTING"):
        Settings.from_env({"CHATD_OPEN_LISTING": "maybe"})
    assert Settings.from_env({}).open_listing is False, "closed unless opened on purpose"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "GET /applications answers 401 to everyone"),
        ({"open_listing": True}, "lists every tenant's token to anyone"),
        ({"admin_token": "t", "open_listing": True}, "CHATD_OPEN_LISTING is ignored"),
    ],
)
def test_the_api_says_at_start_how_the_listing_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, overrides: dict[str, object], expected: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="chatd.handlers.applications"):
        create_app(embedded_settings(tmp_path, **overrides), run_workers=False)
    warnings = [r.getMessage() for r in caplog.records if r.name == "chatd.handlers.applications"]
    assert len(warnings) == 1 and expected in warnings[0], warnings


def test_an_admin_token_alone_starts_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatd.handlers.applications"):
        create_app(embedded_settings(tmp_path, admin_token="t"), run_workers=False)
        create_app(embedded_settings(tmp_path, role="worker"), run_workers=False)  # serves no /applications
    assert not [r for r in caplog.records if r.name == "chatd.handlers.applications"]
