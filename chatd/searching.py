"""What a search query means, shared by every search backend so they agree on results.

A message matches when every word of the query matches one of its words: as a prefix
("hel" finds "helicopter"), or within an edit distance ("helo" finds "hello"; a
transposition counts as one edit). Case never matters. Matches are ordered by message
number. The edits a query word is allowed (``query_terms``) follow Elasticsearch's
``fuzziness: AUTO`` for ordinary words -- 0 up to 2 letters, 1 up to 5, 2 beyond -- within
limits that keep every query to a small multiple of an ordinary one's cost:

* A word is at most ``MAX_WORD_CHARS`` long, counted in UTF-16 code units as Lucene counts
  them (a character outside the Basic Multilingual Plane, such as 𠀀, counts twice); a
  longer word, in a message or in a query, is cut to its first ``MAX_WORD_CHARS``. 255 is
  where Elasticsearch's tokenizers stop, so no server setting can make them disagree.
* Two edits are allowed up to ``MAX_TWO_EDIT_CHARS`` characters, one up to
  ``MAX_FUZZY_CHARS``; longer words match as prefixes only. Elasticsearch's two-edit
  automaton grows with the word's length: one 200-character word cost as much as twenty
  ordinary queries, and a word that long needs no typo tolerance.
* Only the first ``MAX_FUZZY_WORDS`` words of a query match within edits; the others
  match as prefixes only, so ten long words cost no more than three.
"""

from __future__ import annotations

import re

from rapidfuzz.distance import OSA

MAX_QUERY_CHARS = 200
MAX_QUERY_WORDS = 10
MAX_WORD_CHARS = 255
MAX_TWO_EDIT_CHARS = 10
MAX_FUZZY_CHARS = 32
MAX_FUZZY_WORDS = 3
# Words are runs of letters and digits, lower-cased: what Elasticsearch's standard analyzer
# makes of ordinary chat text.
_WORD = re.compile(r"\w+", re.UNICODE)
_BMP_END = "\uffff"


def cut(word: str) -> str:
    """``word`` cut to at most ``MAX_WORD_CHARS`` UTF-16 code units, whole characters only."""
    # Fast path: a word of this many code points cannot reach the limit even if each counts twice.
    if len(word) <= MAX_WORD_CHARS // 2:
        return word
    units = 0
    for index, char in enumerate(word):
        units += 2 if char > _BMP_END else 1
        if units > MAX_WORD_CHARS:
            return word[:index]
    return word


def words(text: str) -> list[str]:
    """The searchable words of ``text``, lower-cased and cut, in order, with repeats."""
    # Lower-cased before the cut: lower-casing may lengthen a word ("İ" -> "i̇").
    return [cut(word.lower()) for word in _WORD.findall(text)]


def query_words(query: str) -> list[str]:
    """Distinct words of a query, in order, at most ``MAX_QUERY_WORDS``."""
    return list(dict.fromkeys(words(query)))[:MAX_QUERY_WORDS]


def allowed_edits(word: str) -> int:
    """The edits ``word`` may differ by when it is one of the first ``MAX_FUZZY_WORDS`` of a query."""
    if len(word) <= 2 or len(word) > MAX_FUZZY_CHARS:
        return 0
    if len(word) <= 5 or len(word) > MAX_TWO_EDIT_CHARS:
        return 1
    return 2


def query_terms(query: str) -> list[tuple[str, int]]:
    """The words of a query (``query_words``), each with the edits it is allowed."""
    return [
        (word, allowed_edits(word) if position < MAX_FUZZY_WORDS else 0)
        for position, word in enumerate(query_words(query))
    ]


def word_matches(query_word: str, edits: int, term: str) -> bool:
    """Whether ``query_word`` (from ``query_terms``, with its ``edits``) matches ``term`` (from ``words``)."""
    if term.startswith(query_word):
        return True
    if edits == 0 or abs(len(term) - len(query_word)) > edits:
        return False
    return OSA.distance(query_word, term, score_cutoff=edits) <= edits
