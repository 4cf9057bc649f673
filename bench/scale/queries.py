"""The reads measured at each corpus size, as lists of request paths per kind.

Each kind has several instances (other words, chats or pages) drawn from what the corpus
really holds, so that a rare word is rare in its chat, a typo is a typo of a word the chat
uses, and a three-word query matches at least the message it was taken from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from urllib.parse import quote

from bench.scale.corpus import Corpus, typo

INSTANCES = 20
PAGE = 20
SMALL_CHATS = list(range(2, 2 + INSTANCES))  # chat ids watched besides the hot chat (id 1)


@dataclass(frozen=True)
class Kind:
    name: str  # e.g. "search: rare word (hot chat)"
    paths: list[str]


def watch(corpus: Corpus) -> None:
    """Ask the corpus to count the words of the chats the queries come from (before it streams)."""
    corpus.watch([1, *SMALL_CHATS])


def kinds(corpus: Corpus) -> list[Kind]:
    rng = random.Random(7)
    hot = corpus.chats[0]
    token_of = {a.id: a.token for a in corpus.applications}
    small = [corpus.chats[i - 1] for i in SMALL_CHATS]

    def search_path(chat_id: int, query: str) -> str:
        chat = corpus.chats[chat_id - 1]
        return f"/applications/{token_of[chat.application_id]}/chats/{chat.number}/messages/search?query={quote(query)}"

    result: list[Kind] = []
    for label, pick in (
        ("common word", _common),
        ("rare word", _rare),
        ("prefix", _prefix),
        ("typo", _typo),
        ("3 words", _three_words),
    ):
        hot_queries = [pick(corpus, hot.id, rng) for _ in range(INSTANCES)]
        result.append(Kind(f"search: {label} (hot chat)", [search_path(hot.id, q) for q in hot_queries]))
        small_paths = [search_path(c.id, pick(corpus, c.id, rng)) for c in small]
        result.append(Kind(f"search: {label} (small chat)", small_paths))
    base = f"/applications/{token_of[hot.application_id]}/chats/{hot.number}/messages"
    middle, last = hot.messages // 2, hot.messages
    result += [
        Kind("list: first page (hot chat)", [f"{base}?limit={PAGE}"]),
        Kind("list: middle page, cursor", [f"{base}?after={middle + i * 37}&limit={PAGE}" for i in range(INSTANCES)]),
        Kind(
            "list: last page, cursor",
            [f"{base}?after={max(0, last - PAGE - i)}&limit={PAGE}" for i in range(INSTANCES)],
        ),
        Kind(
            "list: middle page, page=",
            [f"{base}?page={max(1, middle // PAGE + i)}&per_page={PAGE}" for i in range(INSTANCES)],
        ),
    ]
    gets = []
    for _ in range(200):
        chat = corpus.chats[rng.randrange(len(corpus.chats))]
        if chat.messages:
            number = rng.randint(1, chat.messages)
            gets.append(f"/applications/{token_of[chat.application_id]}/chats/{chat.number}/messages/{number}")
    result.append(Kind("get: one message", gets))
    result.append(
        Kind(
            "get: application",
            [f"/applications/{a.token}" for a in rng.sample(corpus.applications, min(200, len(corpus.applications)))],
        )
    )
    return result


def _content_words(corpus: Corpus, chat_id: int) -> list[tuple[str, int]]:
    return [(w, n) for w, n in corpus.watched[chat_id].most_common() if len(w) >= 3 and w.isalpha()]


def _common(corpus: Corpus, chat_id: int, rng: random.Random) -> str:
    return rng.choice(_content_words(corpus, chat_id)[:10])[0]


def _rare(corpus: Corpus, chat_id: int, rng: random.Random) -> str:
    words = _content_words(corpus, chat_id)
    rare = [w for w, n in words if n <= 2 and len(w) >= 5] or [w for w, _ in words[-20:]]
    return rng.choice(rare)


def _prefix(corpus: Corpus, chat_id: int, rng: random.Random) -> str:
    words = [w for w, n in _content_words(corpus, chat_id) if len(w) >= 7]
    return rng.choice(words[:50] or _content_words(corpus, chat_id)[:5])[:4]


def _typo(corpus: Corpus, chat_id: int, rng: random.Random) -> str:
    vocabulary = set(corpus.words)
    words = [w for w, n in _content_words(corpus, chat_id) if len(w) >= 6][:100]
    for _ in range(100):
        word = rng.choice(words)
        changed = typo(word, corpus.rng)
        if changed != word and changed not in vocabulary:
            return changed
    return rng.choice(words)


def _three_words(corpus: Corpus, chat_id: int, rng: random.Random) -> str:
    for _ in range(200):
        words = list(
            dict.fromkeys(w for w in rng.choice(corpus.samples[chat_id]).split() if len(w) >= 4 and w.isalpha())
        )
        if len(words) >= 3:
            return " ".join(rng.sample(words, 3))
    return _common(corpus, chat_id, rng)
