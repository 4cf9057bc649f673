"""Expensive queries (issue 11, finding 5): no query costs much more than an ordinary one.

A long word in a script without spaces is one word of up to 200 characters; matched within
two edits, it built an automaton that took Elasticsearch ~0.45 s against ~20 ms for an
ordinary query; ten long words cost nearly as much. ``chatd.searching`` now bounds the
edits by word length and the number of words matched within edits. Each test checks the
answer on both backend sets and, on Elasticsearch, the cost as a ratio to ordinary queries
run alternately in the same test (so a slow machine or a busy server slows both alike).
"""

from __future__ import annotations

import statistics
import time

import pytest

from chatd.ports import Backends
from chatd.searching import MAX_FUZZY_CHARS, MAX_QUERY_CHARS, MAX_TWO_EDIT_CHARS
from tests.factories import document

CJK = "漢字仮名交じり文東京大阪京都名古屋横浜神戸札幌福岡"
LONG_CJK = (CJK * 10)[:MAX_QUERY_CHARS]
# Ten words as long as two edits (or one) allow, within the query length limit.
TWO_EDIT_WORDS = " ".join((CJK * 2)[start : start + MAX_TWO_EDIT_CHARS] for start in range(10))
ONE_EDIT_WORDS = " ".join((CJK * 2)[start : start + 19] for start in range(10))
# An ordinary search: two everyday words, one with a typo (two edits allowed for each).
ORDINARY = "lovely weathr"
RUNS = 9
# Before the bounds these queries cost 12 to 13 ordinary ones, after them 0.5 to 3.4: 8 keeps
# the test about the bound, with room for a noisy machine.
MAX_RATIO = 8.0


def _changed(word: str, at: int) -> str:
    """``word`` with its character at ``at`` replaced: one edit away."""
    return word[:at] + ("x" if word[at] != "x" else "y") + word[at + 1 :]


@pytest.fixture
async def corpus(backends: Backends) -> Backends:
    texts = [
        "the weather is lovely",
        LONG_CJK,
        LONG_CJK + "です",
        _changed(LONG_CJK, 100),  # one edit away: long words match by prefix only
        TWO_EDIT_WORDS,
        _changed(_changed(TWO_EDIT_WORDS, 5), 7),  # two edits in the first word: a fuzzy match
        ONE_EDIT_WORDS,
        _changed(ONE_EDIT_WORDS, 5),  # one edit in the first word
        _changed(_changed(ONE_EDIT_WORDS, 5), 7),  # two: too many for a 19-character word
    ]
    # Enough neighbours for the term dictionary to be more than a handful of words.
    texts += [f"filler {n} {CJK[n % len(CJK) :]}{n} word{n}" for n in range(300)]
    documents = [document(1, 1, number, text) for number, text in enumerate(texts, start=1)]
    assert await backends.search.index(documents) == []
    await backends.search.refresh()
    return backends


async def _timed(backends: Backends, query: str) -> tuple[float, list[int]]:
    started = time.perf_counter()
    result = await backends.search.search(1, 1, query, 1, 100)
    return time.perf_counter() - started, [hit.message_number for hit in result.hits]


async def _ratio(backends: Backends, query: str) -> float:
    """Median time of ``query`` over the median of an ordinary query, run alternately."""
    ordinary, expensive = [], []
    for _ in range(RUNS):
        ordinary.append((await _timed(backends, ORDINARY))[0])
        expensive.append((await _timed(backends, query))[0])
    return statistics.median(expensive) / statistics.median(ordinary)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (LONG_CJK, [2, 3]),
        (LONG_CJK[:100], [2, 3, 4]),
        (TWO_EDIT_WORDS, [5, 6, 7]),  # 7: the longer words start with these
        (ONE_EDIT_WORDS, [7, 8]),
    ],
    ids=["one-200-char-word", "100-char-prefix", "ten-two-edit-words", "ten-one-edit-words"],
)
async def test_an_expensive_query_answers_correctly_at_an_ordinary_cost(
    corpus: Backends, backend_set: str, query: str, expected: list[int]
) -> None:
    assert len(query) <= MAX_QUERY_CHARS and len(LONG_CJK) > MAX_FUZZY_CHARS
    await _timed(corpus, ORDINARY)  # warm: the first query of an index pays for loading it
    assert (await _timed(corpus, ORDINARY))[1] == [1]
    assert (await _timed(corpus, query))[1] == expected
    if backend_set == "real":
        ratio = await _ratio(corpus, query)
        assert ratio < MAX_RATIO, f"{ratio:.1f} times an ordinary query"


async def test_a_search_past_its_timeout_is_unavailable_not_partial() -> None:
    """The last guard: shards that stopped at ``search_timeout`` give no (partial) answer."""
    from chatd.backends.elasticsearch_search import ElasticsearchIndex
    from chatd.errors import BackendUnavailable

    class TimedOut:
        async def search(self, **request: object) -> dict:
            assert request["timeout"] == "250ms"
            return {"timed_out": True, "hits": {"total": {"value": 1}, "hits": []}}

    index = ElasticsearchIndex("http://127.0.0.1:1", search_timeout=0.25)
    index._client = TimedOut()  # type: ignore[assignment]
    with pytest.raises(BackendUnavailable):
        await index.search(1, 1, "hello", 1, 20)
