"""Full-text search in SQLite: the embedded stand-in for Elasticsearch.

An inverted index (chat, word) -> message numbers. Each query word's matching words
(``chatd.searching``) are looked up, never scanned for, and the messages that contain them
intersected, so a search's work grows with its matches, not with the chat's vocabulary:

* exact and prefix matches are one range of the term index, ``term >= w AND term < w'``
  (``w`` with its last character incremented: SQLite compares TEXT as UTF-8 bytes, which
  order like code points, so the range holds exactly the words starting with ``w``);
* matches within edits come from a deletion neighbourhood (SymSpell) of the whole file's
  vocabulary: every distinct word indexed anywhere (``search_vocabulary``) is stored in
  ``search_deletions`` under each string it becomes with up to ``_term_depth`` characters
  deleted. A word within ``k`` edits of a query word (a transposition being one) shares such
  a string with it, each side having lost at most ``k`` characters, so the query word's own
  deletions (up to its allowed edits) find every candidate; ``word_matches`` keeps the true
  matches, and one index lookup per candidate keeps those the chat uses. A query word of 10
  characters makes at most 1 + 10 + 45 = 56 lookups. The table's cost, per distinct word of
  ``n`` characters: up to 1 + n + n(n-1)/2 rows for 4 to 12 characters (two deletions: 29
  for 7, 56 for 10, 79 for 12), n + 1 for 2, 3 and 13 to 33 (one), none for 1 or more than
  33 (prefix matches only). 12 and 33, not 10 and 32: a query word may allow more edits
  than the word it matches (``_term_depth``).

  The neighbourhood is the file's, not each chat's: a word's variants are written once,
  however many chats use it, so the table grows with the vocabulary of the language (and its
  typos), not with chats times their words (10,000 chats of a few hundred words each would
  be hundreds of millions of rows). It only grows: a word no message uses any more keeps its
  variants, which costs a lookup that finds no posting, never a wrong match.

The file records the version of this layout (``search_meta``): a file written before the
variants existed would miss typo matches, so it empties itself with a warning instead, and
``chatd reindex`` rebuilds it.

The file records the identity of the store it indexes (``search_meta``). Opened for another
store (a new database beside an old search file), it empties itself and logs a warning:
its documents, keyed by the same numbers with higher revisions, would otherwise win over
the new store's and hide its messages. ``chatd reindex`` then rebuilds it from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

from chatd.backends.sqlite_db import SqliteBacked, SqliteDatabase
from chatd.domain import SearchDocument, SearchHit, SearchResult
from chatd.jobs import format_time, parse_time
from chatd.searching import allowed_edits, query_terms, word_matches, words

logger = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS search_documents (application_id INTEGER NOT NULL, chat_number INTEGER NOT NULL,"
    " message_number INTEGER NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL, revision INTEGER NOT NULL,"
    " PRIMARY KEY (application_id, chat_number, message_number)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_terms (application_id INTEGER NOT NULL, chat_number INTEGER NOT NULL,"
    " term TEXT NOT NULL, message_number INTEGER NOT NULL,"
    " PRIMARY KEY (application_id, chat_number, term, message_number)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_vocabulary (term TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_deletions (variant TEXT NOT NULL, term TEXT NOT NULL,"
    " PRIMARY KEY (variant, term)) WITHOUT ROWID",
)
_WIPE = (
    "DELETE FROM search_terms",
    "DELETE FROM search_documents",
    "DELETE FROM search_deletions",
    "DELETE FROM search_vocabulary",
    # Layout 2's per-chat neighbourhood, replaced by search_deletions.
    "DROP TABLE IF EXISTS search_variants",
)
_STORE_KEY = "store_identity"
_VERSION_KEY = "schema_version"
# 2: search_variants, the deletion neighbourhood of every term of each chat.
# 3: search_vocabulary and search_deletions, one neighbourhood for the whole file.
# Files of an older layout are emptied (and rebuilt by ``chatd reindex``).
_SCHEMA_VERSION = 3
_CHUNK = 500
# Searches of one application that run at once; the others wait without holding a thread. The
# search file's readers (READERS in chatd.backends.sqlite_db, 4) are shared by every tenant: one
# tenant's searches take half of them at most. One at a time was measured too: another tenant's
# search was no faster beside four clients searching a huge chat (2.7x its quiet p95 against
# 2.8x; the shared cores are the limit, not the readers), and the busy tenant's own searches
# queued four deep.
SEARCHES_PER_APPLICATION = 2


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SqliteSearchIndex(SqliteBacked):
    """Search documents and their words in a SQLite file of their own."""

    name = "sqlite-search"
    schema = _SCHEMA

    def __init__(self, database: SqliteDatabase | str, store_identity: Callable[[], Awaitable[str]] | None = None):
        """``store_identity`` reads the id of the store this index belongs to; None skips the check."""
        super().__init__(database)
        self._store_identity = store_identity
        self._searching = _PerKeyLimit(SEARCHES_PER_APPLICATION)

    async def open(self) -> None:
        await super().open()
        try:
            await self.db.transaction(lambda conn: _upgrade(conn, self.db.path))
            if self._store_identity is not None:
                identity = await self._store_identity()
                await self.db.transaction(lambda conn: _claim(conn, identity, self.db.path))
        except BaseException:
            await self.close()
            raise

    async def destroy(self) -> None:
        """Forget every document (as a lost search index would)."""

        await self.db.transaction(_wipe)

    async def refresh(self) -> None:
        """Writes are visible once committed: nothing to do."""

    async def index(self, documents: Sequence[SearchDocument]) -> list[SearchDocument]:
        def write(conn: sqlite3.Connection) -> None:
            for doc in documents:
                _index_one(conn, doc)

        await self.db.transaction(write)
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
        _wipe(conn)
    conn.execute("INSERT OR REPLACE INTO search_meta VALUES (?, ?)", (_STORE_KEY, identity))


def _upgrade(conn: sqlite3.Connection, path: str) -> None:
    """Empty a file written with an older layout (``_SCHEMA_VERSION``), which would search wrongly."""
    row = conn.execute("SELECT value FROM search_meta WHERE key = ?", (_VERSION_KEY,)).fetchone()
    if row is not None and int(row[0]) >= _SCHEMA_VERSION:
        return
    if conn.execute("SELECT 1 FROM search_documents LIMIT 1").fetchone() is not None:
        logger.warning(
            "search index %s has an older layout (version %s, not %s): emptied it;"
            " run `chatd reindex` to make the store's existing messages searchable",
            path,
            row[0] if row is not None else 1,
            _SCHEMA_VERSION,
        )
    _wipe(conn)  # also when empty: drops layout 2's table
    conn.execute("INSERT OR REPLACE INTO search_meta VALUES (?, ?)", (_VERSION_KEY, str(_SCHEMA_VERSION)))


def _wipe(conn: sqlite3.Connection) -> None:
    for statement in _WIPE:
        conn.execute(statement)


def _index_one(conn: sqlite3.Connection, doc: SearchDocument) -> None:
    key = (doc.application_id, doc.chat_number, doc.message_number)
    row = conn.execute(
        "SELECT revision, content FROM search_documents"
        " WHERE application_id = ? AND chat_number = ? AND message_number = ?",
        key,
    ).fetchone()
    if row is not None and row[0] > doc.revision:
        return  # a newer edit is indexed already
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
    _add_to_vocabulary(conn, [term for term in terms if _term_depth(len(term))])


def _add_to_vocabulary(conn: sqlite3.Connection, terms: Sequence[str]) -> None:
    """Give the words no message had before their deletion variants."""
    if not terms:
        return
    known = {
        term
        for part in _chunks(terms)
        for (term,) in conn.execute(
            f"SELECT term FROM search_vocabulary WHERE term IN ({','.join('?' * len(part))})", part
        )
    }
    fresh = [term for term in terms if term not in known]
    conn.executemany("INSERT INTO search_vocabulary VALUES (?)", [(term,) for term in fresh])
    conn.executemany(
        "INSERT OR IGNORE INTO search_deletions VALUES (?, ?)",
        [(variant, term) for term in fresh for variant in _deletions(term, _term_depth(len(term)))],
    )


def _in_chat(conn: sqlite3.Connection, chat: tuple[int, int], term: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM search_terms WHERE application_id = ? AND chat_number = ? AND term = ? LIMIT 1", (*chat, term)
    ).fetchone()
    return row is not None


@functools.cache
def _term_depth(length: int) -> int:
    """The deletions a word of ``length`` characters needs so every query word within edits finds it.

    Not the word's own allowance: a query word of another length may allow more edits (a
    10-character query word, two edits, matches 12-character words), and each edit of a
    match costs the word at most one deletion. So: the most edits of any query word length
    near enough to match.
    """
    allowances = ((other, allowed_edits("x" * other)) for other in range(max(1, length - 2), length + 3))
    return max((edits for other, edits in allowances if abs(other - length) <= edits), default=0)


def _deletions(word: str, depth: int) -> set[str]:
    """``word`` and every string it becomes with up to ``depth`` characters deleted."""
    found = layer = {word}
    for _ in range(depth):
        layer = {variant[:at] + variant[at + 1 :] for variant in layer for at in range(len(variant))}
        found = found | layer
    return found


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


def _fuzzy_terms(conn: sqlite3.Connection, query_word: str, edits: int) -> set[str]:
    """The file's words within ``edits`` of ``query_word`` that do not start with it (any chat's)."""
    if not edits:
        return set()
    candidates: set[str] = set()
    for part in _chunks(sorted(_deletions(query_word, edits))):
        rows = conn.execute(f"SELECT term FROM search_deletions WHERE variant IN ({','.join('?' * len(part))})", part)
        candidates.update(term for (term,) in rows if not term.startswith(query_word))
    return {term for term in candidates if word_matches(query_word, edits, term)}


def _matching_terms(conn: sqlite3.Connection, chat: tuple[int, int], query_word: str, edits: int) -> set[str]:
    """The chat's words that ``query_word`` matches (``word_matches``), by index lookups only.

    The definition the lookup tests check; a search reads the same ranges and candidates
    straight into its postings query (``_matching_select``).
    """
    condition, bounds = _prefix_range(query_word)
    prefixed = conn.execute(
        f"SELECT DISTINCT term FROM search_terms WHERE application_id = ? AND chat_number = ? AND {condition}",
        (*chat, *bounds),
    )
    fuzzy = {term for term in _fuzzy_terms(conn, query_word, edits) if _in_chat(conn, chat, term)}
    return {row[0] for row in prefixed} | fuzzy


def _matching_select(
    conn: sqlite3.Connection, chat: tuple[int, int], query_word: str, edits: int
) -> tuple[str, tuple[object, ...]]:
    """A SELECT of the distinct numbers of the chat's messages with a word ``query_word`` matches."""
    condition, bounds = _prefix_range(query_word)
    # Prefix matches straight from the range of postings: no pass to list the terms first.
    sql = f"SELECT message_number FROM search_terms WHERE application_id = ? AND chat_number = ? AND {condition}"
    params: tuple[object, ...] = (*chat, *bounds)
    # Other chats' words among the candidates find no postings here: no need to check them first.
    fuzzy = sorted(_fuzzy_terms(conn, query_word, edits))
    if not fuzzy:
        return "SELECT DISTINCT" + sql.removeprefix("SELECT"), params
    sql += (
        " UNION SELECT message_number FROM search_terms WHERE application_id = ? AND chat_number = ?"
        f" AND term IN ({','.join('?' * len(fuzzy))})"
    )
    return sql, (*params, *chat, *fuzzy)


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
