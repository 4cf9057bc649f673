"""The SearchIndex contract: the same answers from the embedded index and from Elasticsearch."""

from __future__ import annotations

import pytest

from chatd.ports import Backends
from tests.factories import document


@pytest.fixture
def ports() -> tuple[str, ...]:
    """Only the search index on the real servers: nothing else is created for these tests."""
    return ("search",)


CORPUS = [
    "Hello, World!",
    "hello again",
    "Can you help me?",
    "The helicopter landed",
    "HELLO IN CAPITALS",
    "nothing to see here",
    "Shell scripts are fun",
    "Let's meet tomorrow at noon",
    "The weather is lovely today",
    "Elasticsearch indexes documents",
    "café au lait ☕ à Paris",
    "numbers 12345 and 2026",
]

CASES = {
    "hello": [1, 2, 5],
    "HELLO": [1, 2, 5],
    "hel": [1, 2, 3, 4, 5],
    "helo": [1, 2, 3, 5],
    "hlelo": [1, 2, 5],
    "helicoptr": [4],
    "world hello": [1],
    "hello world": [1],
    "wrld": [1],
    "tomorow noon": [8],
    "xyzzy": [],
    "café": [11],
    "paris": [11],
    "123": [12],
    "lovely weather": [9],
    "elastic": [10],
}


@pytest.fixture
async def corpus(backends: Backends) -> Backends:
    documents = [document(1, 1, number, text) for number, text in enumerate(CORPUS, start=1)]
    documents += [document(1, 2, 1, "hello from another chat"), document(2, 1, 1, "hello from another app")]
    assert await backends.search.index(documents) == []
    await backends.search.refresh()
    return backends


@pytest.mark.parametrize("query", sorted(CASES))
async def test_query_semantics(corpus: Backends, query: str) -> None:
    result = await corpus.search.search(1, 1, query, 1, 100)
    assert [hit.message_number for hit in result.hits] == CASES[query]
    assert result.total == len(CASES[query])


async def test_hits_carry_content_and_time(corpus: Backends) -> None:
    result = await corpus.search.search(1, 1, "helicopter", 1, 20)
    hit = result.hits[0]
    assert (hit.message_number, hit.content) == (4, "The helicopter landed")
    assert hit.created_at == document(1, 1, 4, "").created_at


async def test_pagination(corpus: Backends) -> None:
    first = await corpus.search.search(1, 1, "hel", 1, 2)
    third = await corpus.search.search(1, 1, "hel", 3, 2)
    assert [h.message_number for h in first.hits] == [1, 2]
    assert [h.message_number for h in third.hits] == [5]
    assert first.total == third.total == 5
    assert (await corpus.search.search(1, 1, "hel", 9, 2)).hits == []


async def test_query_without_words_matches_nothing(corpus: Backends) -> None:
    assert (await corpus.search.search(1, 1, "?!", 1, 20)).total == 0


async def test_newer_revision_wins_whatever_the_order(backends: Backends) -> None:
    await backends.search.index([document(1, 1, 1, "edited text", revision=2)])
    await backends.search.index([document(1, 1, 1, "original text", revision=1)])
    await backends.search.refresh()
    assert (await backends.search.search(1, 1, "original", 1, 20)).total == 0
    assert [h.content for h in (await backends.search.search(1, 1, "edited", 1, 20)).hits] == ["edited text"]


async def test_an_edit_forgets_the_old_words_and_keeps_the_neighbours(backends: Backends) -> None:
    await backends.search.index([document(1, 1, n, f"original words {n}") for n in (1, 2, 3)])
    await backends.search.index([document(1, 1, 2, "edited words", revision=2)])
    await backends.search.refresh()
    assert [h.message_number for h in (await backends.search.search(1, 1, "original", 1, 20)).hits] == [1, 3]
    assert [h.message_number for h in (await backends.search.search(1, 1, "edited", 1, 20)).hits] == [2]
    assert (await backends.search.search(1, 1, "words", 1, 20)).total == 3


async def test_reindexing_never_duplicates(backends: Backends) -> None:
    for _ in range(3):
        await backends.search.index([document(1, 1, 1, "same message")])
    await backends.search.refresh()
    assert (await backends.search.search(1, 1, "same", 1, 20)).total == 1


# Words the two backends once read differently: past Elasticsearch's 255-character token
# limit (issue 11, finding 3), in scripts without spaces, outside the Basic Multilingual
# Plane (two UTF-16 units each, as Lucene counts), emoji (not words) and mixed scripts.
LONG_WORD = "long" + "a" * 250 + "tailword"  # 262 characters
WIDE_WORD = "\U00020000" * 200  # 200 characters, 400 UTF-16 code units
SCRIPTS = [
    "東京で会いましょう",
    "我喜欢学习中文 hello",
    "emoji 🎉 party 🥳",
    "Привет мир and 世界",
    f"before {LONG_WORD} after",
    f"wide {WIDE_WORD}",
    "İstanbul straße",
    "mixed日本語words and café☕bar",
]
SCRIPT_CASES = {
    "東京": [1],
    "東京で会いましょう": [1],
    "中文": [],
    "我喜欢": [2],
    "🎉": [],
    "🎉 party": [3],
    "привет": [4],
    "ПРИВЕТ МИР": [4],
    "世界": [4],
    "мир 世界": [4],
    LONG_WORD: [5],
    LONG_WORD[:255]: [5],
    LONG_WORD + "more": [5],
    "tailword": [],
    "after": [5],
    WIDE_WORD: [6],
    WIDE_WORD[:127]: [6],
    "\U00020000" * 128 + "x": [6],
    "İstanbul": [7],
    "straße": [7],
    "mixed日本語": [8],
    "mixed日本語words": [8],
    "café": [8],
    "bar": [8],
}


@pytest.fixture
async def scripts(backends: Backends) -> Backends:
    documents = [document(1, 3, number, text) for number, text in enumerate(SCRIPTS, start=1)]
    assert await backends.search.index(documents) == []
    await backends.search.refresh()
    return backends


@pytest.mark.parametrize("query", sorted(SCRIPT_CASES), ids=lambda query: ascii(query)[1:40])
async def test_scripts_and_long_words(scripts: Backends, query: str) -> None:
    result = await scripts.search.search(1, 3, query, 1, 100)
    assert [hit.message_number for hit in result.hits] == SCRIPT_CASES[query]
    assert result.total == len(SCRIPT_CASES[query])


async def test_keyset_pages_match_the_numbered_pages(corpus: Backends) -> None:
    first = await corpus.search.search_after(1, 1, "hel", 0, 2)
    second = await corpus.search.search_after(1, 1, "hel", 2, 2)
    last = await corpus.search.search_after(1, 1, "hel", 4, 2)
    assert [[h.message_number for h in r.hits] for r in (first, second, last)] == [[1, 2], [3, 4], [5]]
    # The total counts every match, not only those past the cursor.
    assert first.total == second.total == last.total == 5
    # A cursor between matches starts at the next one; past the last there is nothing.
    assert [h.message_number for h in (await corpus.search.search_after(1, 1, "hel", 3, 10)).hits] == [4, 5]
    assert (await corpus.search.search_after(1, 1, "hel", 5, 10)).hits == []
    assert (await corpus.search.search_after(1, 1, "?!", 0, 10)).total == 0
