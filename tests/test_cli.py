"""The chatd command's admin subcommands, on both backend sets."""

from __future__ import annotations

import pytest

from chatd import cli
from tests.conftest import Api, Namespace


async def test_reindex_rebuilds_a_lost_search_index(namespace: Namespace, make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api()
    token = await api.create_application()
    chat = await api.create_chat(token)
    for text in ("hello there", "general kenobi", "hello again"):
        await api.create_message(token, chat, text)
    await api.settle()
    search = f"/applications/{token}/chats/{chat}/messages/search?query=hello"
    assert (await api.get_json(search))["total"] == 2
    index = api.service.search_index
    await index.destroy()  # type: ignore[attr-defined]
    await index.open()  # an empty index again, as after losing its data
    assert (await api.get_json(search))["total"] == 0

    assert await cli._admin("reindex", await namespace.settings()) == 0
    await api.settle()
    assert (await api.get_json(search))["total"] == 2


@pytest.mark.parametrize("command", ["migrate", "check", "reconcile", "reindex"])
def test_commands_parse(command: str) -> None:
    assert cli._parser().parse_args([command]).command == command


def test_serve_flags_parse() -> None:
    args = cli._parser().parse_args(["serve", "--role", "worker", "--port", "9000"])
    assert (args.role, args.port) == ("worker", 9000)
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", "--role", "nope"])
