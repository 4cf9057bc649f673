"""What a search query means, shared by every search backend so they agree on results.

A message matches when every word of the query matches one of its words: as a prefix
("hel" finds "helicopter"), or within Elasticsearch's ``fuzziness: AUTO`` edit distance
("helo" finds "hello"; 0 edits up to 2 letters, 1 up to 5, 2 beyond, a transposition
counting as one). Case never matters. Matches are ordered by message number.
"""

from __future__ import annotations

import re

from rapidfuzz.distance import OSA

MAX_QUERY_CHARS = 200
MAX_QUERY_WORDS = 10
# Words are runs of letters and digits, lower-cased: what Elasticsearch's standard analyzer
# makes of ordinary chat text.
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """The searchable words of ``text``, lower-cased, in order, with repeats."""
    return [word.lower() for word in _WORD.findall(text)]


def query_words(query: str) -> list[str]:
    """Distinct words of a query, in order, at most ``MAX_QUERY_WORDS``."""
    return list(dict.fromkeys(words(query)))[:MAX_QUERY_WORDS]


def allowed_edits(word: str) -> int:
    """Elasticsearch's AUTO fuzziness for a query word of this length."""
    if len(word) <= 2:
        return 0
    return 1 if len(word) <= 5 else 2


def word_matches(query_word: str, term: str) -> bool:
    if term.startswith(query_word):
        return True
    edits = allowed_edits(query_word)
    if edits == 0 or abs(len(term) - len(query_word)) > edits:
        return False
    return OSA.distance(query_word, term, score_cutoff=edits) <= edits
