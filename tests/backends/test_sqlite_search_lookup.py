"""The embedded index finds a query word's terms without reading the chat's vocabulary (issue 8, item 2).

Exact and prefix terms come from a range of the term index, fuzzy ones from a table of
deletion variants (``chatd.backends.sqlite_search``). These tests run the statements a search
runs (``_matching_select`` for each query word, ``_search`` for a whole query) and check that
they find exactly the messages a plain scan finds (``word_matches`` against every word of
every message of the chat), and that a search's work does not grow with the vocabulary.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.backends import sqlite_search
from chatd.backends.sqlite_search import SqliteSearchIndex
from chatd.domain import SearchResult
from chatd.searching import MAX_FUZZY_CHARS, MAX_TWO_EDIT_CHARS, allowed_edits, query_terms, word_matches, words
from tests.factories import document, eventually

# Letters that exercise the UTF-8 byte order SQLite compares TEXT in: ASCII, two-byte (é, ß),
# three-byte (漢, and U+FFFF's neighbour ﬀ is not a word char, so 豈), four-byte (𠀀) characters.
ALPHABET = "abcé漢豈𠀀1"


def _connection() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for statement in SqliteSearchIndex.schema:
        conn.execute(statement)
    return conn


def _mutate(word: str, rng: random.Random, times: int) -> str:
    """``word`` after ``times`` random edits: insert, delete, substitute or swap neighbours."""
    for _ in range(times):
        op = rng.choice("idst")
        at = rng.randrange(len(word) + 1)
        char = rng.choice(ALPHABET)
        if op == "i":
            word = word[:at] + char + word[at:]
        elif op == "d" and at < len(word):
            word = word[:at] + word[at + 1 :]
        elif op == "s" and at < len(word):
            word = word[:at] + char + word[at + 1 :]
        elif op == "t" and at + 1 < len(word):
            word = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return word


def _scan(texts: dict[int, str], query_word: str, edits: int) -> set[int]:
    """The reference: the numbers of the messages with a word ``query_word`` matches, by reading every word."""
    return {number for number, text in texts.items() if any(word_matches(query_word, edits, w) for w in words(text))}


def _matching(conn: sqlite3.Connection, chat: tuple[int, int], query_word: str, edits: int) -> set[int]:
    """The numbers the SELECT a search builds for ``query_word`` (``_matching_select``) returns."""
    sql, params = sqlite_search._matching_select(conn, chat, query_word, edits)
    return {number for (number,) in conn.execute(sql, params)}


def _searched(conn: sqlite3.Connection, query: str, per_page: int = 3) -> tuple[list[int], list[int]]:
    """Chat (1, 1) searched for ``query`` as a request does (``_search``), page after page: (totals, numbers)."""
    wanted = query_terms(query)
    totals, found, page = [], [], 1
    while True:
        result = sqlite_search._search(conn, 1, 1, wanted, page, per_page)
        totals.append(result.total)
        found += [hit.message_number for hit in result.hits]
        if len(result.hits) < per_page:
            return totals, found
        page += 1


@settings(max_examples=400, deadline=None)
@given(
    texts=st.lists(st.text(ALPHABET + " ", max_size=40), min_size=1, max_size=6),
    lengths=st.lists(st.integers(1, MAX_FUZZY_CHARS + 3), max_size=4),
    seed=st.integers(0, 2**32),
    fuzzy=st.booleans(),
)
def test_a_search_finds_what_a_plain_scan_finds(texts: list[str], lengths: list[int], seed: int, fuzzy: bool) -> None:
    rng = random.Random(seed)
    # Words at the length boundaries of the definition (10/11/12, 32/33/34 characters) too.
    texts = texts + ["".join(rng.choice(ALPHABET) for _ in range(n)) for n in lengths]
    conn = _connection()
    chat_texts = dict(enumerate(texts, start=1))
    # One batch, as a worker's index job or a rebuild's page writes them.
    sqlite_search.index_documents(conn, [document(1, 1, number, text) for number, text in chat_texts.items()])
    # Another chat's and another application's words, near this chat's: never found here.
    others = [_mutate(text, rng, 1) for text in texts]
    # One batch of two applications: each one's words go to its own vocabulary.
    sqlite_search.index_documents(
        conn,
        [
            document(application, chat, number, text)
            for number, text in enumerate(others, start=len(texts) + 1)
            for application, chat in ((1, 2), (2, 1))
        ],
    )
    vocabulary = {word for text in texts for word in words(text)}
    # Query words near the vocabulary (typos, prefixes), and random ones.
    queries = [_mutate(term, rng, rng.randrange(4)) for term in sorted(vocabulary)]
    queries += [term[: rng.randrange(1, len(term) + 1)] for term in sorted(vocabulary)]
    queries += ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 14))) for _ in range(5)]
    for query in queries:
        for query_word in words(query):
            edits = allowed_edits(query_word) if fuzzy else 0
            expected = _scan(chat_texts, query_word, edits)
            assert _matching(conn, (1, 1), query_word, edits) == expected, (query_word, edits)
    # Whole queries of one to three words: every word must match (an intersection), in number order.
    for start in range(0, len(queries), 3):
        query = " ".join(queries[start : start + rng.randrange(1, 4)])
        wanted = query_terms(query)
        if not wanted:
            continue
        expected = sorted(set.intersection(*(_scan(chat_texts, word, edits) for word, edits in wanted)))
        totals, found = _searched(conn, query)
        assert found == expected and set(totals) == {len(expected)}, query


def test_every_typo_at_the_length_boundaries_is_found() -> None:
    """Exhaustive near the boundaries where a word and its typo have different allowances."""
    rng = random.Random(8)
    conn = _connection()
    vocabulary: set[str] = set()
    for length in (2, 3, 4, 5, 6, MAX_TWO_EDIT_CHARS, MAX_TWO_EDIT_CHARS + 1, MAX_TWO_EDIT_CHARS + 2):
        for length_ in (length, MAX_FUZZY_CHARS - 1, MAX_FUZZY_CHARS, MAX_FUZZY_CHARS + 1, MAX_FUZZY_CHARS + 2):
            term = "".join(rng.choice("abcdefgh") for _ in range(length_))
            vocabulary.add(term)
    chat_texts = dict(enumerate(sorted(vocabulary), start=1))
    for number, term in chat_texts.items():
        sqlite_search.index_documents(conn, [document(1, 1, number, term)])
    for term in sorted(vocabulary):
        for _ in range(30):
            query_word = _mutate(term, rng, rng.randrange(1, 3)) or "a"
            edits = allowed_edits(query_word)
            assert _matching(conn, (1, 1), query_word, edits) == _scan(chat_texts, query_word, edits), (
                query_word,
                term,
            )


async def _search_steps(path: Path, distinct_words: int) -> tuple[int, list[int]]:
    """SQLite VM steps of one search in a chat of ``distinct_words`` random words, and its hits."""
    rng = random.Random(distinct_words)
    # Vocabulary of letters a-m; the query's words are of letters n-z, so no vocabulary word
    # is within its edits and the matches stay the same whatever the vocabulary's size.
    vocabulary = [
        "".join(rng.choice("abcdefghijklm") for _ in range(rng.randrange(4, 10))) for _ in range(distinct_words)
    ]
    texts = [" ".join(vocabulary[start : start + 20]) for start in range(0, len(vocabulary), 20)]
    texts.append("sunny tuesday ponytail")
    index = SqliteSearchIndex(str(path))
    await index.open()
    try:
        await index.index([document(1, 1, number, text) for number, text in enumerate(texts, start=1)])
        steps, result = await search_steps(index, 1, "suny tuesdya ponyt")
        return steps, [hit.message_number for hit in result.hits]
    finally:
        await index.close()


async def test_a_search_does_not_read_the_chat_vocabulary(tmp_path: Path) -> None:
    small, small_hits = await _search_steps(tmp_path / "small.db", 2_000)
    large, large_hits = await _search_steps(tmp_path / "large.db", 20_000)
    assert small_hits == [101] and large_hits == [1001]
    # The full scan read every term: ten times the vocabulary, ten times the steps.
    assert large / small < 1.5, f"{small} steps for 2,000 words, {large} for 20,000"


async def _reopened(path: Path, query: str) -> list[int]:
    index = SqliteSearchIndex(str(path))
    await index.open()
    try:
        return [hit.message_number for hit in (await index.search(1, 1, query, 1, 20)).hits]
    finally:
        await index.close()


async def test_a_file_of_an_older_layout_is_emptied_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "search.db"
    index = SqliteSearchIndex(str(path))
    await index.open()
    await index.index([document(1, 1, 1, "hello")])
    await index.close()
    with caplog.at_level(logging.WARNING, logger="chatd.backends.sqlite_search"):
        assert await _reopened(path, "helo") == [1]  # the current layout is kept
    assert "older layout" not in caplog.text
    # A file from before the variants: no version recorded, no variants for its words.
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM search_meta WHERE key = 'schema_version'")
        conn.execute("DELETE FROM search_app_deletions")
    with caplog.at_level(logging.WARNING, logger="chatd.backends.sqlite_search"):
        # Emptied: even a prefix, which needs no variants, finds nothing until a reindex.
        assert await _reopened(path, "hel") == []
    assert "older layout" in caplog.text and "chatd reindex" in caplog.text


def test_a_word_gets_its_variants_once_per_application_however_many_chats_use_it() -> None:
    """The neighbourhood grows with each application's vocabulary, not with chats times their words."""
    conn = _connection()
    sqlite_search.index_documents(conn, [document(1, 1, 1, "meeting tomorrow morning")])
    one_chat = conn.execute("SELECT COUNT(*) FROM search_app_deletions").fetchone()[0]
    for chat in range(2, 52):
        sqlite_search.index_documents(conn, [document(1, chat, 1, "morning meeting tomorrow")])
    assert conn.execute("SELECT COUNT(*) FROM search_app_deletions").fetchone()[0] == one_chat > 0
    # Another application's words are its own: their variants are written for it once too.
    for chat in range(1, 51):
        sqlite_search.index_documents(conn, [document(2, chat, 1, "tomorrow morning meeting")])
    assert conn.execute("SELECT COUNT(*) FROM search_app_deletions").fetchone()[0] == 2 * one_chat
    # Each chat still finds only its own words: a typo of a word another chat uses finds nothing here.
    sqlite_search.index_documents(conn, [document(1, 99, 1, "lunch")])
    sqlite_search.index_documents(conn, [document(9, 9, 1, "lunch")])
    assert _matching(conn, (1, 99), "meetign", 2) == set()
    assert _matching(conn, (9, 9), "meetign", 2) == set()
    assert _matching(conn, (1, 1), "meetign", 2) == {1}


async def test_one_tenants_searches_leave_readers_for_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four slow searches of one application hold two readers; another application's search runs at once."""
    index = SqliteSearchIndex(str(tmp_path / "search.db"))
    await index.open()
    release, inside = threading.Event(), []
    real_search = sqlite_search._search

    def slow_for_application_1(conn, application_id, *args):  # type: ignore[no-untyped-def]
        if application_id == 1:
            inside.append(application_id)
            release.wait(30)
        return real_search(conn, application_id, *args)

    monkeypatch.setattr(sqlite_search, "_search", slow_for_application_1)
    try:
        await index.index([document(1, 1, 1, "heavy chat"), document(2, 1, 1, "small chat")])
        heavy = [asyncio.create_task(index.search(1, 1, "chat", 1, 20)) for _ in range(4)]
        await eventually(lambda: _true(len(inside) == sqlite_search.SEARCHES_PER_APPLICATION))
        small = await asyncio.wait_for(index.search(2, 1, "chat", 1, 20), 10)
        assert [hit.message_number for hit in small.hits] == [1]
        assert len(inside) == sqlite_search.SEARCHES_PER_APPLICATION  # the others still wait
        release.set()
        assert [result.total for result in await asyncio.gather(*heavy)] == [1, 1, 1, 1]
        assert len(inside) == 4 and not index._searching._slots  # every slot given back
    finally:
        release.set()
        await index.close()


async def _true(value: bool) -> bool:
    return value


async def search_steps(index: SqliteSearchIndex, application_id: int, query: str) -> tuple[int, SearchResult]:
    """A search of chat 1 on the reader's thread and connection, and the SQLite VM steps it took:
    its work, whatever else the machine does."""
    wanted = query_terms(query)

    def measured(conn: sqlite3.Connection) -> tuple[int, SearchResult]:
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        conn.set_progress_handler(count, 1)
        try:
            result = sqlite_search._search(conn, application_id, 1, wanted, 1, 20)
        finally:
            conn.set_progress_handler(None, 1)
        return steps, result

    return await index.db.read(measured)
