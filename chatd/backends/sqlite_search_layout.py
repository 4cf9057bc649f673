"""The embedded search file's tables: what they hold, how an older file is brought up to date.

``search_documents`` holds each message's newest indexed revision; ``search_terms`` its words,
keyed (application, chat, word, message). Typo matches come from a deletion neighbourhood
(SymSpell), kept **per application**: each application's vocabulary (``search_app_vocabulary``,
every distinct word its messages use) is stored in ``search_app_deletions`` under each string
it becomes with up to ``term_depth`` characters deleted. A word within ``k`` edits of a query
word (a transposition being one) shares such a string with it, each side having lost at most
``k`` characters, so the query word's own deletions find every candidate.

Keyed by application, not by file: a search reads only its own application's variants, so no
other tenant's words (40,000 typos of "restaurant", say) can become its candidates, and its cost
stays its own. Not by chat either: a word's variants are written once per application however
many of its chats use it (per chat, 10,000 chats of a few hundred words would be hundreds of
millions of rows). The cost, per distinct word of ``n`` characters of an application: up to
1 + n + n(n-1)/2 rows for 4 to 12 characters (two deletions: 29 for 7, 56 for 10, 79 for 12),
n + 1 for 2, 3 and 13 to 33 (one), none for 1 or more than 33 (prefix matches only). 12 and 33,
not 10 and 32: a query word may allow more edits than the word it matches (``term_depth``).
It only grows: a word no message uses any more keeps its variants, which costs a lookup that
finds no posting, never a wrong match.

Layouts (``search_meta.schema_version``): 1 had no variants, 2 a neighbourhood per chat, 3 one
for the whole file, 4 one per application. A file of layout 3 is migrated in place by
``sql/sqlite_search/0004_*.sql`` (the migration named NNNN brings a file to layout NNNN), which
rebuilds the application neighbourhoods from the words the file indexes: no reindex needed.
Files older than layout 3 are emptied with a warning; ``chatd reindex`` rebuilds them.

The file also records the identity of the store it indexes (``claim``). Opened for another
store (a new database beside an old search file), it empties itself and logs a warning: its
documents, keyed by the same numbers with higher revisions, would otherwise win over the new
store's and hide its messages. ``chatd reindex`` then rebuilds it from the store.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Sequence

from chatd.backends.sqlite_lists import chunks, json_list, marks
from chatd.migrations import migration_files, split_statements
from chatd.searching import allowed_edits

# The search index's own logger: its operators (and tests) follow one name for the file's warnings.
logger = logging.getLogger("chatd.backends.sqlite_search")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS search_documents (application_id INTEGER NOT NULL, chat_number INTEGER NOT NULL,"
    " message_number INTEGER NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL, revision INTEGER NOT NULL,"
    " PRIMARY KEY (application_id, chat_number, message_number)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_terms (application_id INTEGER NOT NULL, chat_number INTEGER NOT NULL,"
    " term TEXT NOT NULL, message_number INTEGER NOT NULL,"
    " PRIMARY KEY (application_id, chat_number, term, message_number)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_app_vocabulary (application_id INTEGER NOT NULL, term TEXT NOT NULL,"
    " PRIMARY KEY (application_id, term)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS search_app_deletions (application_id INTEGER NOT NULL, variant TEXT NOT NULL,"
    " term TEXT NOT NULL, PRIMARY KEY (application_id, variant, term)) WITHOUT ROWID",
)
_WIPE = (
    "DELETE FROM search_terms",
    "DELETE FROM search_documents",
    "DELETE FROM search_app_deletions",
    "DELETE FROM search_app_vocabulary",
    # Earlier layouts' neighbourhoods: layout 2's per chat, layout 3's for the whole file.
    "DROP TABLE IF EXISTS search_variants",
    "DROP TABLE IF EXISTS search_deletions",
    "DROP TABLE IF EXISTS search_vocabulary",
)
MIGRATIONS = "sqlite_search"  # sql/sqlite_search/NNNN_name.sql
SCHEMA_VERSION = 4
# The oldest layout a migration starts from; older files are emptied (their words may have
# been cut differently, and layout 1 and 2 files come from before the store identity).
_OLDEST_MIGRATED = 3
_STORE_KEY = "store_identity"
_VERSION_KEY = "schema_version"


def claim(conn: sqlite3.Connection, identity: str, path: str) -> None:
    """Tie the file to the store ``identity``, emptying it first if it holds another store's documents."""
    row = conn.execute("SELECT value FROM search_meta WHERE key = ?", (_STORE_KEY,)).fetchone()
    if row is not None and row[0] == identity:
        return
    # No identity yet: a new file, or one written before identities were recorded, whose
    # store cannot be known; its documents are dropped too, as they may be another store's.
    if row is not None or _has_documents(conn):
        logger.warning(
            "search index %s belongs to another store (%s, not %s): emptied it;"
            " run `chatd reindex` to make the store's existing messages searchable",
            path,
            row[0] if row is not None else "unrecorded",
            identity,
        )
        wipe(conn)
    conn.execute("INSERT OR REPLACE INTO search_meta VALUES (?, ?)", (_STORE_KEY, identity))


def upgrade(conn: sqlite3.Connection, path: str) -> None:
    """Bring a file written with an older layout up to ``SCHEMA_VERSION`` (migrated, or emptied if too old).

    Runs after ``SCHEMA`` (whose tables are created if missing), in one write transaction.
    """
    row = conn.execute("SELECT value FROM search_meta WHERE key = ?", (_VERSION_KEY,)).fetchone()
    version = int(row[0]) if row is not None else None
    if version is not None and version >= SCHEMA_VERSION:
        return
    if version is not None and version >= _OLDEST_MIGRATED:
        _migrate(conn, version, path)
    else:  # a new file (nothing to keep), or one too old to migrate
        if _has_documents(conn):
            logger.warning(
                "search index %s has an older layout (version %s, not %s): emptied it;"
                " run `chatd reindex` to make the store's existing messages searchable",
                path,
                version or 1,
                SCHEMA_VERSION,
            )
        wipe(conn)  # also when empty: drops the older layouts' tables
    conn.execute("INSERT OR REPLACE INTO search_meta VALUES (?, ?)", (_VERSION_KEY, str(SCHEMA_VERSION)))


def _migrate(conn: sqlite3.Connection, version: int, path: str) -> None:
    """Apply the migrations from layout ``version`` to ``SCHEMA_VERSION``, each once, in order."""
    steps = [(int(name.split("_", 1)[0]), name, sql) for name, sql in migration_files(MIGRATIONS)]
    pending = [(number, name, sql) for number, name, sql in steps if version < number <= SCHEMA_VERSION]
    if [number for number, _, _ in pending] != list(range(version + 1, SCHEMA_VERSION + 1)):
        raise RuntimeError(f"search index {path}: migrations from layout {version} to {SCHEMA_VERSION} are missing")
    # The migrations compute deletion variants with this module's own definitions.
    conn.create_function("chatd_search_depth", 1, lambda term: term_depth(len(term)), deterministic=True)
    conn.create_function(
        "chatd_search_deletions",
        1,
        lambda term: json_list(sorted(deletions(term, term_depth(len(term))))),
        deterministic=True,
    )
    for _, name, sql in pending:
        # Once per file, in the open of the first process that finds it old. Another process
        # opening the file meanwhile waits for the write lock (busy_timeout, 10 s): a longer
        # migration makes its start fail, and systemd or compose start it again.
        logger.info("search index %s: applying migration %s", path, name)
        for statement in split_statements(sql):
            conn.execute(statement)


def _has_documents(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM search_documents LIMIT 1").fetchone() is not None


def wipe(conn: sqlite3.Connection) -> None:
    """Forget every document and word (and the tables of older layouts)."""
    for statement in _WIPE:
        conn.execute(statement)


def add_to_vocabulary(conn: sqlite3.Connection, application_id: int, terms: Sequence[str]) -> None:
    """Give the words ``application_id``'s messages had not used before their deletion variants."""
    terms = [term for term in terms if term_depth(len(term))]
    if not terms:
        return
    known = {
        term
        for part in chunks(terms)
        for (term,) in conn.execute(
            f"SELECT term FROM search_app_vocabulary WHERE application_id = ? AND term IN ({marks(len(part))})",
            (application_id, *part),
        )
    }
    fresh = [term for term in terms if term not in known]
    conn.executemany("INSERT INTO search_app_vocabulary VALUES (?, ?)", [(application_id, term) for term in fresh])
    conn.executemany(
        "INSERT OR IGNORE INTO search_app_deletions VALUES (?, ?, ?)",
        [(application_id, variant, term) for term in fresh for variant in deletions(term, term_depth(len(term)))],
    )


@functools.cache
def term_depth(length: int) -> int:
    """The deletions a word of ``length`` characters needs so every query word within edits finds it.

    Not the word's own allowance: a query word of another length may allow more edits (a
    10-character query word, two edits, matches 12-character words), and each edit of a
    match costs the word at most one deletion. So: the most edits of any query word length
    near enough to match.
    """
    allowances = ((other, allowed_edits("x" * other)) for other in range(max(1, length - 2), length + 3))
    return max((edits for other, edits in allowances if abs(other - length) <= edits), default=0)


def deletions(word: str, depth: int) -> set[str]:
    """``word`` and every string it becomes with up to ``depth`` characters deleted."""
    found = layer = {word}
    for _ in range(depth):
        layer = {variant[:at] + variant[at + 1 :] for variant in layer for at in range(len(variant))}
        found = found | layer
    return found
