"""Full-text search in SQLite: the embedded stand-in for Elasticsearch.

An inverted index (chat, word) -> message numbers. Each query word's matching words
(``chatd.searching``) are looked up, never scanned for, and the messages that contain them
intersected, so a search's work grows with its matches, not with the chat's vocabulary:

* exact and prefix matches are one range of the term index, ``term >= w AND term < w'``
  (``w`` with its last character incremented: SQLite compares TEXT as UTF-8 bytes, which
  order like code points, so the range holds exactly the words starting with ``w``);
* matches within edits come from the application's deletion neighbourhood (SymSpell; the
  tables and their cost are in ``chatd.backends.sqlite_search_layout``): the query word's own
  deletions (up to its allowed edits; at most 1 + 10 + 45 = 56 for a word of 10 characters)
  find the application's words that may be within edits, ``word_matches`` keeps the true
  matches, and the postings query keeps those this chat uses (one index probe each). Only
  the searching application's words are read: another tenant's vocabulary costs this
  search nothing (its other chats' words cost it a probe each; a neighbourhood per chat
  would cost far more to write, see the layout).

The candidates go to the postings query as one JSON array (``json_each``), not one variable
each: a chat's matches for a query word may outnumber the variables a statement can bind
(``chatd.backends.sqlite_lists``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from chatd.backends import sqlite_search_layout as layout
from chatd.backends.sqlite_db import SqliteBacked, SqliteDatabase
from chatd.backends.sqlite_lists import chunks, json_list, marks
from chatd.domain import SearchDocument, SearchHit, SearchResult
from chatd.jobs import format_time, parse_time
from chatd.searching import query_terms, word_matches, words

# Searches of one application that run at once; the others wait without holding a thread. The
# search file's readers (READERS in chatd.backends.sqlite_db, 4) are shared by every tenant: one
# tenant's searches take half of them at most. One at a time was measured too: another tenant's
# search was no faster beside four clients searching a huge chat (2.7x its quiet p95 against
# 2.8x; the shared cores are the limit, not the readers), and the busy tenant's own searches
# queued four deep.
SEARCHES_PER_APPLICATION = 2


class SqliteSearchIndex(SqliteBacked):
    """Search documents and their words in a SQLite file of their own."""

    name = "sqlite-search"
    schema = layout.SCHEMA

    def __init__(self, database: SqliteDatabase | str, store_identity: Callable[[], Awaitable[str]] | None = None):
        """``store_identity`` reads the id of the store this index belongs to; None skips the check."""
        super().__init__(database)
        self._store_identity = store_identity
        self._searching = _PerKeyLimit(SEARCHES_PER_APPLICATION)

    async def open(self) -> None:
        await super().open()
        try:
            await self.db.transaction(lambda conn: layout.upgrade(conn, self.db.path))
            if self._store_identity is not None:
                identity = await self._store_identity()
                await self.db.transaction(lambda conn: layout.claim(conn, identity, self.db.path))
        except BaseException:
            await self.close()
            raise

    async def destroy(self) -> None:
        """Forget every document (as a lost search index would)."""

        await self.db.transaction(layout.wipe)

    async def refresh(self) -> None:
        """Writes are visible once committed: nothing to do."""

    async def documents_after(self, after: tuple[int, int, int] | None, limit: int) -> list[SearchDocument]:
        start = after if after is not None else (0, 0, 0)
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT application_id, chat_number, message_number, content, created_at, revision"
                " FROM search_documents WHERE (application_id, chat_number, message_number) > (?, ?, ?)"
                " ORDER BY application_id, chat_number, message_number LIMIT ?",
                (*start, limit),
            ).fetchall()
        )
        return [SearchDocument(r[0], r[1], r[2], r[3], parse_time(r[4]), r[5]) for r in rows]

    async def index(self, documents: Sequence[SearchDocument]) -> list[SearchDocument]:
        await self.db.transaction(lambda conn: index_documents(conn, documents))
        return []

    async def search(self, application_id: int, chat_number: int, query: str, page: int, per_page: int) -> SearchResult:
        return await self._search(application_id, chat_number, query, page, per_page)

    async def search_after(
        self, application_id: int, chat_number: int, query: str, after: int, limit: int
    ) -> SearchResult:
        return await self._search(application_id, chat_number, query, 1, limit, after)

    async def _search(
        self, application_id: int, chat_number: int, query: str, page: int, per_page: int, after: int = 0
    ) -> SearchResult:
        wanted = query_terms(query)
        if not wanted:
            return SearchResult(0, [])
        async with self._searching.slot(application_id):
            return await self.db.read(
                lambda conn: _search(conn, application_id, chat_number, wanted, page, per_page, after)
            )


class _PerKeyLimit:
    """At most ``limit`` holders per key at once; the others wait their turn, in order."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._users: dict[int, int] = {}

    @contextlib.asynccontextmanager
    async def slot(self, key: int) -> AsyncIterator[None]:
        semaphore = self._slots.setdefault(key, asyncio.Semaphore(self.limit))
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with semaphore:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:  # nobody holds or waits: forget the key
                del self._users[key], self._slots[key]


def index_documents(conn: sqlite3.Connection, documents: Sequence[SearchDocument]) -> None:
    """Index ``documents`` in the caller's transaction, each application's new words once.

    The vocabulary is updated once per application per batch, not once per document: a rebuild
    of 100,000 messages took 57 s one document at a time and 41 s so (the deletion variants of a
    word are written once either way; the lookups of the words already known were the rest).
    """
    vocabulary: dict[int, set[str]] = defaultdict(set)
    for doc in documents:
        vocabulary[doc.application_id] |= _index_one(conn, doc)
    for application_id, terms in vocabulary.items():
        if terms:
            layout.add_to_vocabulary(conn, application_id, sorted(terms))


def _index_one(conn: sqlite3.Connection, doc: SearchDocument) -> set[str]:
    """Index one document; the words it has (none if a newer revision is indexed already)."""
    key = (doc.application_id, doc.chat_number, doc.message_number)
    row = conn.execute(
        "SELECT revision, content FROM search_documents"
        " WHERE application_id = ? AND chat_number = ? AND message_number = ?",
        key,
    ).fetchone()
    if row is not None and row[0] > doc.revision:
        return set()  # a newer edit is indexed already
    terms = set(words(doc.content))
    conn.execute(
        "INSERT OR REPLACE INTO search_documents VALUES (?, ?, ?, ?, ?, ?)",
        (*key, doc.content, format_time(doc.created_at), doc.revision),
    )
    if row is not None:
        # Remove the old version's words by their full key: the terms are keyed (chat, term,
        # message), so a delete by message alone would scan every term of the chat.
        conn.executemany(
            "DELETE FROM search_terms WHERE application_id = ? AND chat_number = ? AND term = ? AND message_number = ?",
            [(*key[:2], term, doc.message_number) for term in set(words(row[1])) - terms],
        )
    conn.executemany(
        "INSERT OR IGNORE INTO search_terms VALUES (?, ?, ?, ?)",
        [(*key[:2], term, doc.message_number) for term in terms],
    )
    return terms


def _prefix_end(word: str) -> str | None:
    """The least string above every string that starts with ``word`` (None: there is none).

    ``word`` with its last character incremented, skipping the surrogates UTF-8 cannot hold;
    SQLite's BINARY order of UTF-8 bytes is code point order, so this bound is exact.
    """
    chars = list(word)
    while chars:
        following = ord(chars.pop()) + 1
        if 0xD800 <= following <= 0xDFFF:
            following = 0xE000
        if following <= 0x10FFFF:
            return "".join(chars) + chr(following)
    return None


def _prefix_range(query_word: str) -> tuple[str, tuple[str, ...]]:
    """The SQL condition and parameters selecting the terms that start with ``query_word``."""
    end = _prefix_end(query_word)
    if end is None:
        return "term >= ?", (query_word,)
    return "term >= ? AND term < ?", (query_word, end)


def _fuzzy_terms(conn: sqlite3.Connection, application_id: int, query_word: str, edits: int) -> list[str]:
    """The application's words within ``edits`` of ``query_word`` that do not start with it, sorted.

    Read from that application's neighbourhood only: another application's words are never
    read. Its other chats' words are not filtered out here: the postings query finds them
    no postings in this chat, by the same index probe a check here would cost.
    """
    if not edits:
        return []
    candidates: set[str] = set()
    # At most 56 deletions (a 10-character word, two edits): one chunk, whatever the query.
    for part in chunks(sorted(layout.deletions(query_word, edits))):
        rows = conn.execute(
            f"SELECT term FROM search_app_deletions WHERE application_id = ? AND variant IN ({marks(len(part))})",
            (application_id, *part),
        )
        candidates.update(term for (term,) in rows if not term.startswith(query_word))
    return sorted(term for term in candidates if word_matches(query_word, edits, term))


def _matching_select(
    conn: sqlite3.Connection, chat: tuple[int, int], query_word: str, edits: int
) -> tuple[str, tuple[object, ...]]:
    """A SELECT of the distinct numbers of the chat's messages with a word ``query_word`` matches."""
    condition, bounds = _prefix_range(query_word)
    # Prefix matches straight from the range of postings: no pass to list the terms first.
    sql = f"SELECT message_number FROM search_terms WHERE application_id = ? AND chat_number = ? AND {condition}"
    params: tuple[object, ...] = (*chat, *bounds)
    # The application's other chats' words among the candidates find no postings here.
    fuzzy = _fuzzy_terms(conn, chat[0], query_word, edits)
    if not fuzzy:
        return "SELECT DISTINCT" + sql.removeprefix("SELECT"), params
    # One variable for every typo match however many the chat has: the statement joins every
    # query word's, and a variable each could pass the limit SQLite sets on one statement.
    sql += (
        " UNION SELECT message_number FROM search_terms WHERE application_id = ? AND chat_number = ?"
        " AND term IN (SELECT value FROM json_each(?))"
    )
    return sql, (*params, *chat, json_list(fuzzy))


def _search(
    conn: sqlite3.Connection,
    application_id: int,
    chat_number: int,
    wanted: list[tuple[str, int]],
    page: int,
    per_page: int,
    after: int = 0,
) -> SearchResult:
    chat = (application_id, chat_number)
    # The matches are counted, intersected and sorted by SQLite: its C code runs without
    # Python's GIL, so a search matching most of a 200,000-message chat no longer holds the
    # GIL for the tenth of a second that building Python sets of its numbers took, while
    # every other request of the process waited for it (measured at 1M messages: another
    # tenant's small search went from 4 ms to 200 ms beside four such searches).
    selects = [_matching_select(conn, chat, query_word, edits) for query_word, edits in wanted]
    matches = " INTERSECT ".join(f"SELECT * FROM ({sql})" for sql, _ in selects)
    params = tuple(value for _, values in selects for value in values)
    # One pass: the total over every match, and the page past ``after`` (keyset) or at ``page``.
    rows = conn.execute(
        f"SELECT n, total FROM (SELECT message_number AS n, COUNT(*) OVER () AS total FROM ({matches}))"
        " WHERE n > ? ORDER BY n LIMIT ? OFFSET ?",
        (*params, after, per_page, (page - 1) * per_page),
    ).fetchall()
    if rows:
        total = rows[0][1]
    else:  # a page past the end: the total still counts every match
        total = conn.execute(f"SELECT COUNT(*) FROM ({matches})", params).fetchone()[0]
    window = [row[0] for row in rows]
    hits = []
    for number in window:
        row = conn.execute(
            "SELECT content, created_at FROM search_documents WHERE application_id = ?"
            " AND chat_number = ? AND message_number = ?",
            (*chat, number),
        ).fetchone()
        hits.append(SearchHit(number, row[0], parse_time(row[1])))
    return SearchResult(total, hits)
