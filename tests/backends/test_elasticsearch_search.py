"""ElasticsearchIndex on the real server: the embedded index's answers, and what only Elasticsearch does.

Every test gets an index of its own (``chatd-t-<hex>``), deleted at teardown.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from chatd.backends.elasticsearch_search import ElasticsearchIndex, SearchRejected
from chatd.backends.sqlite_search import SqliteSearchIndex
from chatd.domain import SearchDocument
from chatd.errors import BackendUnavailable, BadRequest
from tests.contract.test_search import CORPUS
from tests.factories import WHEN, document, fails_without_hanging
from tests.servers import free_port

pytestmark = pytest.mark.real

ELASTICSEARCH_URL = os.environ.get("CHATD_TEST_ELASTICSEARCH_URL", "http://127.0.0.1:9200")

# Chat (1, 1): ordinary chat text, and the text where a tokenizer's choices show.
CHAT = [
    *CORPUS,  # the contract suite's corpus first, so its message numbers hold here too
    "see example.com or www.chatd.io",
    "pi is 3.14159, e is 2.71828",
    "你好世界",
    "東京 タワー で 会いましょう",
    "ΟΔΟΣ ΣΙΣΥΦΟΥ",
    "İstanbul'da buluşalım",
    "snake_case and kebab-case",
    "internationalization matters",
    "antidisestablishmentarianism",
    "Straße und STRASSE",
    "naïve résumé",
    "nai\u0308ve decomposed",
    "e-mail me at bob@example.org",
    "I'd've done it",
    "x",
    "ab ba",
    "recieve the package",
    "receive the parcel",
    "thier house",
    "their house",
    "mississippi river",
    "don't stop believing",
    "emoji 🎉 party 🎉",
    "tabs\tand\nnewlines",
    "UPPER lower MiXeD",
    "helloworld joined",
    "hell's kitchen",
    "a1b2c3 d4",
    "١٢٣ arabic digits",
    "Ünïcödé ÀÉÎÕÜ",
    "  leading and trailing spaces  ",
    "...",
    "the quick brown fox",
    "jumps over the lazy dog",
    "quick quick quick",
    "brown paper packages",
    "meeting notes for tomorrow",
    "Tomorrow never dies",
]
ELSEWHERE = [
    document(1, 2, 1, "hello from another chat"),
    document(1, 2, 2, "zebra crossing helicopter"),
    document(2, 1, 1, "hello from another application"),
    document(2, 1, 2, "zebra stripes"),
    document(11, 1, 1, "hello zebra"),
    document(1, 11, 1, "hello zebra"),
]
QUERIES = [
    "hello",
    "HELLO",
    "hel",
    "helo",
    "hlelo",
    "helicoptr",
    "world hello",
    "hello world",
    "wrld",
    "tomorow noon",
    "xyzzy",
    "café",
    "cafe",
    "CAFÉ",
    "paris",
    "123",
    "12345",
    "com",
    "example",
    "chatd io",
    "14159",
    "3",
    "s",
    "let",
    "你好",
    "世界",
    "東京",
    "οδος",
    "ΟΔΟΣ",
    "σισυφου",
    "istanbul",
    "da",
    "snake",
    "case",
    "kebab",
    "internationalizatio",
    "internationalisation",
    "antidisestablishmentarianism",
    "antidisestablishmentarianizm",
    "strasse",
    "straße",
    "naive",
    "naïve",
    "nai",
    "ve",
    "zebra",
    "another",
    "receive",
    "their",
    "mississipi",
    "dont",
    "don",
    "t",
    "🎉",
    "?!",
    "mixed",
    "quick brown",
    "brown quick",
    "the",
    "a",
    "ab",
    "ba",
    "x",
    "١٢٣",
    "unicode",
    "ünïcödé",
    "qu",
    "tomorrow",
    "hell",
    "helloworld",
    "lazy dgo",
    "d4",
    "a1b2",
    "ll",
    "the quick brown fox jumps over the lazy dog and more words than allowed",
]


def corpus() -> list[SearchDocument]:
    return [document(1, 1, number, text) for number, text in enumerate(CHAT, start=1)] + ELSEWHERE


def index_name() -> str:
    return f"chatd-t-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def opened(url: str = ELASTICSEARCH_URL, **options: Any) -> AsyncIterator[ElasticsearchIndex]:
    index = ElasticsearchIndex(url, options.pop("index", None) or index_name(), **options)
    await index.open()
    try:
        yield index
    finally:
        try:
            if url == ELASTICSEARCH_URL:
                await index.destroy()
        finally:
            await index.close()


@pytest.fixture
async def es() -> AsyncIterator[ElasticsearchIndex]:
    """An index with the production defaults (3 shards), so routing decides which shard is read."""
    async with opened() as index:
        yield index


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[SqliteSearchIndex]:
    index = SqliteSearchIndex(str(tmp_path / "search.db"))
    await index.open()
    yield index
    await index.close()


async def numbers(
    index: Any, query: str, page: int = 1, per_page: int = 100, application_id: int = 1, chat_number: int = 1
) -> tuple[int, list[int]]:
    result = await index.search(application_id, chat_number, query, page, per_page)
    return result.total, [hit.message_number for hit in result.hits]


async def test_same_answers_as_the_embedded_index(es: ElasticsearchIndex, embedded: SqliteSearchIndex) -> None:
    for index in (es, embedded):
        assert await index.index(corpus()) == []
    await es.refresh()
    answers = {query: (await numbers(es, query), await numbers(embedded, query)) for query in QUERIES}
    differing = {
        query: f"elasticsearch {mine} != embedded {theirs}"
        for query, (mine, theirs) in answers.items()
        if mine != theirs
    }
    assert differing == {}
    # The comparison means something only if most queries find messages, and the right ones.
    assert sum(1 for mine, _ in answers.values() if mine[0]) >= len(QUERIES) * 3 // 4
    assert answers["hlelo"][0] == (3, [1, 2, 5])
    assert answers["com"][0] == (1, [13])  # "example.com" is two words, not one
    assert 8 in answers["s"][0][1]  # "Let's" has the word "s"
    assert answers["zebra"][0] == (0, [])  # only other chats and applications have zebras


async def test_pages_match_the_embedded_index(es: ElasticsearchIndex, embedded: SqliteSearchIndex) -> None:
    for index in (es, embedded):
        await index.index(corpus())
    await es.refresh()
    for query in ("hel", "the", "a", "e"):
        for page in range(1, 6):
            assert await numbers(es, query, page, 3) == await numbers(embedded, query, page, 3), (query, page)


async def test_hits_carry_content_and_utc_time(es: ElasticsearchIndex) -> None:
    await es.index([document(1, 1, 7, "Straße und STRASSE")])
    await es.refresh()
    [hit] = (await es.search(1, 1, "strasse", 1, 20)).hits
    assert (hit.message_number, hit.content, hit.created_at) == (7, "Straße und STRASSE", WHEN)
    assert hit.created_at.utcoffset() == UTC.utcoffset(None)


async def test_an_older_revision_never_overwrites_a_newer_one(es: ElasticsearchIndex) -> None:
    assert await es.index([document(1, 1, 1, "edited text", revision=2)]) == []
    # Elasticsearch answers 409 (version conflict): success, nothing to retry.
    assert await es.index([document(1, 1, 1, "original text", revision=1)]) == []
    await es.refresh()
    assert (await es.search(1, 1, "original", 1, 20)).total == 0
    assert [hit.content for hit in (await es.search(1, 1, "edited", 1, 20)).hits] == ["edited text"]
    assert await es.index([document(1, 1, 1, "edited again", revision=3)]) == []
    await es.refresh()
    assert [hit.content for hit in (await es.search(1, 1, "edited", 1, 20)).hits] == ["edited again"]


async def test_redelivery_overwrites_instead_of_duplicating(es: ElasticsearchIndex) -> None:
    for _ in range(2):
        assert await es.index([document(1, 1, 1, "same message"), document(1, 1, 2, "other")]) == []
    await es.refresh()
    assert (await es.client.count(index=es.index_name))["count"] == 2
    assert (await es.search(1, 1, "same", 1, 20)).total == 1


async def test_pagination_in_message_number_order(es: ElasticsearchIndex) -> None:
    # Indexed in reverse so that only the sort, not insertion order, explains the result.
    await es.index([document(1, 1, number, f"ping {number}") for number in range(25, 0, -1)])
    await es.refresh()
    pages = [await numbers(es, "ping", page, 10) for page in (1, 2, 3, 4)]
    assert pages == [(25, list(range(1, 11))), (25, list(range(11, 21))), (25, list(range(21, 26))), (25, [])]


async def test_two_thousand_documents_in_two_bulks(es: ElasticsearchIndex) -> None:
    documents = [document(1, 1, number, f"bulk message {number}") for number in range(1, 2001)]
    for start in (0, 1000):
        assert await es.index(documents[start : start + 1000]) == []
    await es.refresh()
    pages = [await numbers(es, "bulk", page, 1000) for page in (1, 2)]
    assert [total for total, _ in pages] == [2000, 2000]
    assert pages[0][1] + pages[1][1] == list(range(1, 2001))


async def test_deep_pages_are_refused_but_short_last_pages_served() -> None:
    async with opened(max_result_window=25) as es:
        await es.index([document(1, 1, number, f"deep {number}") for number in range(1, 31)])
        await es.index([document(1, 2, number, f"deep {number}") for number in range(1, 24)])
        await es.refresh()
        assert await numbers(es, "deep", 2, 10) == (30, list(range(11, 21)))
        with pytest.raises(BadRequest, match="page too deep") as caught:
            await es.search(1, 1, "deep", 3, 10)
        assert caught.value.status == 400
        assert await numbers(es, "deep", 4, 10) == (30, [])  # past the end: empty, as everywhere
        # 23 matches: page 3 ends at 30 > 25, but only 23 exist, all within the window.
        assert await numbers(es, "deep", 3, 10, chat_number=2) == (23, [21, 22, 23])


async def test_a_cursor_reaches_past_the_result_window() -> None:
    async with opened(max_result_window=25) as es:
        await es.index([document(1, 1, number, f"deep {number}") for number in range(1, 31)])
        await es.refresh()
        walked: list[int] = []
        after = 0
        while True:
            result = await es.search_after(1, 1, "deep", after, 10)
            assert result.total == 30
            if not result.hits:
                break
            walked += [hit.message_number for hit in result.hits]
            after = walked[-1]
        assert walked == list(range(1, 31))


async def test_fuzzy_terms_of_other_chats_do_not_crowd_out_this_one() -> None:
    # Elasticsearch's default fuzzy rewrite keeps the 50 best terms of the whole shard; a shard
    # holds many chats, so this chat's word would be lost among the others' near-misses.
    async with opened(shards=1) as es:
        decoys = [letter + "ellz" for letter in "abcdefghijklmnopqrstuvw"]
        decoys += [f"h{letter}llz" for letter in "abcdfghijklmnopqrstuvwxyz"]
        decoys += [f"he{letter}lz" for letter in "abcdfghijkmnopqrstuvwxyz"]
        await es.index([document(1, 2, number, word) for number, word in enumerate(decoys, start=1)])
        await es.index([document(1, 1, 1, "xellz")])
        await es.refresh()
        assert await numbers(es, "hellz") == (1, [1])


async def test_a_document_elasticsearch_refuses_is_reported_and_the_rest_indexed(es: ElasticsearchIndex) -> None:
    too_big = SearchDocument(1, 2**31, 1, "chat number beyond integer", WHEN, 1)
    with pytest.raises(SearchRejected) as caught:
        await es.index([document(1, 1, 1, "fine message"), too_big])
    assert list(caught.value.reasons) == [too_big.doc_id]
    await es.refresh()
    assert await numbers(es, "fine") == (1, [1])


async def test_blocked_writes_are_an_outage_until_lifted(es: ElasticsearchIndex) -> None:
    # What a full disk does (flood-stage watermark): every item is refused with 403 cluster_block_exception.
    await es.client.indices.put_settings(index=es.index_name, settings={"index.blocks.write": True})
    try:
        with pytest.raises(BackendUnavailable):
            await es.index([document(1, 1, 1, "blocked"), document(1, 1, 2, "blocked too")])
    finally:
        await es.client.indices.put_settings(index=es.index_name, settings={"index.blocks.write": False})
    assert await es.index([document(1, 1, 1, "unblocked")]) == []
    await es.refresh()
    assert await numbers(es, "unblocked") == (1, [1])


async def test_ping_fails_once_the_index_is_gone(es: ElasticsearchIndex) -> None:
    await es.ping()
    await es.destroy()
    await fails_without_hanging(es.ping)


async def test_concurrent_opens_of_a_new_index_both_succeed() -> None:
    name = index_name()
    first, second = (ElasticsearchIndex(ELASTICSEARCH_URL, name) for _ in range(2))
    try:
        await asyncio.gather(first.open(), second.open())
        await first.ping()
        await second.ping()
    finally:
        await first.destroy()
        await first.close()
        await second.close()


async def test_a_closed_port_is_unavailable_within_a_bound() -> None:
    index = ElasticsearchIndex(f"http://127.0.0.1:{free_port()}", index_name())
    await fails_without_hanging(index.open)


async def test_a_server_that_never_answers_is_unavailable_within_the_timeout() -> None:
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    index = ElasticsearchIndex(f"http://127.0.0.1:{port}", index_name(), request_timeout=0.5, max_retries=0)
    try:
        await fails_without_hanging(index.open)
    finally:
        silent.close()


class Proxy:
    """A TCP relay to Elasticsearch that a test can cut, as if the server went away."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, upstream_writer]
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def test_every_operation_is_unavailable_while_the_server_is_gone_and_recovers_after() -> None:
    proxy = Proxy(int(ELASTICSEARCH_URL.rsplit(":", 1)[1].strip("/")))
    await proxy.start()
    name = index_name()
    try:
        async with opened(f"http://127.0.0.1:{proxy.port}", index=name) as es:
            await es.ping()
            await proxy.cut()
            await fails_without_hanging(es.ping)
            await fails_without_hanging(lambda: es.index([document(1, 1, 1, "lost")]))
            await fails_without_hanging(lambda: es.search(1, 1, "lost", 1, 20))
            await fails_without_hanging(es.refresh)
            await proxy.start()
            assert await es.index([document(1, 1, 1, "back again")]) == []
            await es.refresh()
            assert await numbers(es, "back") == (1, [1])
    finally:
        await proxy.cut()
        async with opened(index=name):
            pass  # deleted on the way out


async def test_an_index_from_before_keyed_words_gets_the_field_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An index created by an older chatd (plain ``words``) is usable after open and ``chatd reindex``."""
    name = index_name()
    async with opened(index=name) as es:
        await es.destroy()
        await es.client.indices.create(
            index=name,
            mappings={"properties": {"words": {"type": "text", "analyzer": "whitespace"}}},
        )
        with caplog.at_level("WARNING", logger="chatd.backends.elasticsearch_search"):
            await es.open()  # what a process does at start
        assert "chatd reindex" in caplog.text
        await es.index([document(1, 1, 1, "hello world")])  # as the reindex writes it again
        await es.refresh()
        assert await numbers(es, "helo") == (1, [1])
        caplog.clear()
        await es.open()  # once added, nothing more to say
        assert "chatd reindex" not in caplog.text
