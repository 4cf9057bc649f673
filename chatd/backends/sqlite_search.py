"""Full-text search in SQLite: the embedded stand-in for Elasticsearch.

An inverted index (chat, word) -> message numbers. A query scans the chat's distinct
words once per query word, keeps those that match (``chatd.searching``), and intersects
the messages that contain them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from chatd.backends.sqlite_db import SqliteBacked
from chatd.domain import SearchDocument, SearchHit, SearchResult
from chatd.jobs import format_time, parse_time
from chatd.searching import query_words, word_matches, words

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS search_documents (application_id INTEGER NOT NULL, chat_number INTEGER NOT NULL,"
    " message_number INTEGER NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL, revision INTEGER NOT NULL,"
    " PRIMARY KEY (application_id, chat_number, message_number)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_terms (application_id INTEGER NOT NULL, chat_number INTEGER NOT NULL,"
    " term TEXT NOT NULL, message_number INTEGER NOT NULL,"
    " PRIMARY KEY (application_id, chat_number, term, message_number)) WITHOUT ROWID",
)
_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SqliteSearchIndex(SqliteBacked):
    """Search documents and their words in a SQLite file of their own."""

    name = "sqlite-search"
    schema = _SCHEMA

    async def destroy(self) -> None:
        """Forget every document (as a lost search index would)."""

        def wipe(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM search_terms")
            conn.execute("DELETE FROM search_documents")

        await self.db.transaction(wipe)

    async def refresh(self) -> None:
        """Writes are visible once committed: nothing to do."""

    async def index(self, documents: Sequence[SearchDocument]) -> list[SearchDocument]:
        def write(conn: sqlite3.Connection) -> None:
            for doc in documents:
                _index_one(conn, doc)

        await self.db.transaction(write)
        return []

    async def search(self, application_id: int, chat_number: int, query: str, page: int, per_page: int) -> SearchResult:
        wanted = query_words(query)
        if not wanted:
            return SearchResult(0, [])
        return await self.db.read(lambda conn: _search(conn, application_id, chat_number, wanted, page, per_page))


def _index_one(conn: sqlite3.Connection, doc: SearchDocument) -> None:
    key = (doc.application_id, doc.chat_number, doc.message_number)
    row = conn.execute(
        "SELECT revision, content FROM search_documents"
        " WHERE application_id = ? AND chat_number = ? AND message_number = ?",
        key,
    ).fetchone()
    if row is not None and row[0] > doc.revision:
        return  # a newer edit is indexed already
    conn.execute(
        "INSERT OR REPLACE INTO search_documents VALUES (?, ?, ?, ?, ?, ?)",
        (*key, doc.content, format_time(doc.created_at), doc.revision),
    )
    if row is not None:
        # Remove the old version's words by their full key: the terms are keyed (chat, term,
        # message), so a delete by message alone would scan every term of the chat.
        conn.executemany(
            "DELETE FROM search_terms WHERE application_id = ? AND chat_number = ? AND term = ? AND message_number = ?",
            [(doc.application_id, doc.chat_number, term, doc.message_number) for term in set(words(row[1]))],
        )
    conn.executemany(
        "INSERT OR IGNORE INTO search_terms VALUES (?, ?, ?, ?)",
        [(doc.application_id, doc.chat_number, term, doc.message_number) for term in set(words(doc.content))],
    )


def _search(
    conn: sqlite3.Connection, application_id: int, chat_number: int, wanted: list[str], page: int, per_page: int
) -> SearchResult:
    chat = (application_id, chat_number)
    vocabulary = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT term FROM search_terms WHERE application_id = ? AND chat_number = ?", chat
        )
    ]
    found: set[int] | None = None
    for query_word in wanted:
        terms = [term for term in vocabulary if word_matches(query_word, term)]
        numbers: set[int] = set()
        for part in _chunks(terms):
            marks = ",".join("?" * len(part))
            numbers.update(
                row[0]
                for row in conn.execute(
                    "SELECT message_number FROM search_terms WHERE application_id = ? AND chat_number = ?"
                    f" AND term IN ({marks})",
                    (*chat, *part),
                )
            )
        found = numbers if found is None else found & numbers
        if not found:
            return SearchResult(0, [])
    ordered = sorted(found or ())
    window = ordered[(page - 1) * per_page : page * per_page]
    hits = []
    for number in window:
        row = conn.execute(
            "SELECT content, created_at FROM search_documents WHERE application_id = ?"
            " AND chat_number = ? AND message_number = ?",
            (*chat, number),
        ).fetchone()
        hits.append(SearchHit(number, row[0], parse_time(row[1])))
    return SearchResult(len(ordered), hits)
