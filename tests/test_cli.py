"""The chatd command's admin subcommands, on both backend sets."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from chatd import cli, reindexing
from chatd.domain import ChatJob, MessageJob
from chatd.ports import Backends
from tests.conftest import Api, Namespace


async def test_reindex_rebuilds_a_lost_search_index(namespace: Namespace, make_api, capsys) -> None:  # type: ignore[no-untyped-def]
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
    # Rebuilt by the command itself: searchable at once, with no worker running.
    assert (await api.get_json(search))["total"] == 2
    assert "indexed 3 messages" in capsys.readouterr().out


async def test_reindex_reports_progress_as_lines_off_a_terminal(backends: Backends) -> None:
    application = await backends.store.create_application("t" * 32, "app", datetime.now(UTC))
    await backends.store.save_chats([ChatJob(application.id, 1, datetime.now(UTC))])
    await backends.store.save_messages(
        [MessageJob(application.id, 1, n, f"word{n} common", datetime.now(UTC)) for n in range(1, 26)]
    )
    stream = io.StringIO()  # not a TTY: plain lines, no bar
    report = await reindexing.rebuild(
        backends.store, backends.search, reindexing.Progress(total=25, stream=stream, every=0), page_size=10
    )
    assert report.messages == 25
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("reindex: 25 of 25 (100%) messages")
    assert len(lines) == 4  # after each of the 3 pages, and the closing line
    assert (await backends.search.search(application.id, 1, "common", 1, 100)).total == 25


@pytest.mark.parametrize("command", ["migrate", "check", "reconcile", "reindex"])
def test_commands_parse(command: str) -> None:
    assert cli._parser().parse_args([command]).command == command


def test_serve_flags_parse() -> None:
    args = cli._parser().parse_args(["serve", "--role", "worker", "--port", "9000"])
    assert (args.role, args.port) == ("worker", 9000)
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", "--role", "nope"])


def test_reindex_draws_a_bar_with_a_total_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = reindexing.Progress(total=200, stream=stream)
    progress.advance(50)
    progress.close()
    assert "reindex:  25%" in stream.getvalue() and "/200" in stream.getvalue()
