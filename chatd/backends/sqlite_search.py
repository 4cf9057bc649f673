"""Full-text search in SQLite: the embedded stand-in for Elasticsearch.

An inverted index (chat, word) -> message numbers. A query scans the chat's distinct
words once per query word, keeps those that match (``chatd.searching``), and intersects
the messages that contain them.

The file records the identity of the store it indexes (``search_meta``). Opened for another
store (a new database beside an old search file), it empties itself and logs a warning:
its documents, keyed by the same numbers with higher revisions, would otherwise win over
the new store's and hide its messages. ``chatd reindex`` then rebuilds it from the store.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence

from chatd.backends.sqlite_db import SqliteBacked
from chatd.domain import SearchDocument, SearchHit, SearchResult
from chatd.jobs import format_time, parse_time
from chatd.searching import query_terms, word_matches, words

logger = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS search_documents (application_id INTEGER NOT NULL, chat_number INTEGER NOT NULL,"
    " message_number INTEGER NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL, revision INTEGER NOT NULL,"
    " PRIMARY KEY (application_id, chat_number, message_number)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_terms (application_id INTEGER NOT NULL, chat_number INTEGER NOT NULL,"
    " term TEXT NOT NULL, message_number INTEGER NOT NULL,"
    " PRIMARY KEY (application_id, chat_number, term, message_number)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_STORE_KEY = "store_identity"
_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SqliteSearchIndex(SqliteBacked):
    """Search documents and their words in a SQLite file of their own."""

    name = "sqlite-search"
    schema = _SCHEMA

    def __init__(self, path: str, store_identity: Callable[[], Awaitable[str]] | None = None):
        """``store_identity`` reads the id of the store this index belongs to; None skips the check."""
        super().__init__(path)
        self._store_identity = store_identity

    async def open(self) -> None:
        await super().open()
        if self._store_identity is None:
            return
        try:
            identity = await self._store_identity()
            await self.db.transaction(lambda conn: _claim(conn, identity, self.db.path))
        except BaseException:
            await self.close()
            raise

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
        wanted = query_terms(query)
        if not wanted:
            return SearchResult(0, [])
        return await self.db.read(lambda conn: _search(conn, application_id, chat_number, wanted, page, per_page))


def _claim(conn: sqlite3.Connection, identity: str, path: str) -> None:
    """Tie the file to the store ``identity``, emptying it first if it holds another store's documents."""
    row = conn.execute("SELECT value FROM search_meta WHERE key = ?", (_STORE_KEY,)).fetchone()
    if row is not None and row[0] == identity:
        return
    # No identity yet: a new file, or one written before identities were recorded, whose
    # store cannot be known; its documents are dropped too, as they may be another store's.
    if row is not None or conn.execute("SELECT 1 FROM search_documents LIMIT 1").fetchone() is not None:
        logger.warning(
            "search index %s belongs to another store (%s, not %s): emptied it;"
            " run `chatd reindex` to make the store's existing messages searchable",
            path,
            row[0] if row is not None else "unrecorded",
            identity,
        )
        conn.execute("DELETE FROM search_terms")
        conn.execute("DELETE FROM search_documents")
    conn.execute("INSERT OR REPLACE INTO search_meta VALUES (?, ?)", (_STORE_KEY, identity))


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
    conn: sqlite3.Connection,
    application_id: int,
    chat_number: int,
    wanted: list[tuple[str, int]],
    page: int,
    per_page: int,
) -> SearchResult:
    chat = (application_id, chat_number)
    vocabulary = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT term FROM search_terms WHERE application_id = ? AND chat_number = ?", chat
        )
    ]
    found: set[int] | None = None
    for query_word, edits in wanted:
        terms = [term for term in vocabulary if word_matches(query_word, edits, term)]
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
