"""A corpus that reads like chat, of any size, the same on every run.

Words are drawn with the frequencies English has in use (the ``wordfreq`` package's lists: a
few words make most of any text, and a long Zipf tail of rare ones follows); a few percent of
them carry a typo (a character dropped, doubled, swapped or replaced), as typed chat does.
Message lengths are log-normal: most messages are a few words, some run to a few hundred.

Shape, for N messages: N/1,000 applications and N/100 chats (so 1,000 and 10,000 at a million),
one hot chat (application 1, chat 1) with a fifth of all messages, the rest spread at random.
Generation streams in chunks, so a million messages never sit in memory at once.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import wordfreq

VOCABULARY_SIZE = 50_000
TYPO_RATE = 0.03
MAX_WORDS = 300
START = datetime(2025, 12, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Shape:
    messages: int
    applications: int
    chats: int
    hot_messages: int

    @classmethod
    def of(cls, messages: int) -> Shape:
        return cls(messages, max(2, messages // 1_000), max(20, messages // 100), messages // 5)


@dataclass
class Application:
    id: int
    token: str
    chats: list[int] = field(default_factory=list)  # chat ids, in number order


@dataclass
class Chat:
    id: int
    application_id: int
    number: int
    messages: int = 0


@dataclass(frozen=True)
class Message:
    id: int
    chat_id: int
    number: int
    content: str
    created_at: datetime


class Corpus:
    """Applications, chats and a stream of messages of one ``Shape``, from one seed."""

    def __init__(self, shape: Shape, seed: int = 20261201):
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.words = np.array(wordfreq.top_n_list("en", VOCABULARY_SIZE, wordlist="best"), dtype=object)
        frequencies = np.array([wordfreq.word_frequency(w, "en", wordlist="best") for w in self.words])
        self.weights = frequencies / frequencies.sum()
        self.applications = [Application(i, secrets.token_urlsafe(24)) for i in range(1, shape.applications + 1)]
        self.chats: list[Chat] = []
        for chat_id in range(1, shape.chats + 1):
            # Chat 1 is the hot chat of application 1; the others go to applications at random.
            owner = self.applications[0 if chat_id == 1 else int(self.rng.integers(shape.applications))]
            owner.chats.append(chat_id)
            self.chats.append(Chat(chat_id, owner.id, len(owner.chats)))
        # Word counts of the chats the queries are drawn from (the hot chat and a few small ones).
        self.watched: dict[int, Counter[str]] = {}
        self.samples: dict[int, list[str]] = {}

    def watch(self, chat_ids: list[int]) -> None:
        for chat_id in chat_ids:
            self.watched[chat_id] = Counter()
            self.samples[chat_id] = []

    def messages(self, chunk: int = 50_000) -> Iterator[list[Message]]:
        """Every message, in storage (id) order, ``chunk`` at a time."""
        next_id, left = 1, self.shape.messages
        seconds = 365 * 24 * 3600 / max(1, self.shape.messages)
        while left > 0:
            count = min(chunk, left)
            yield self._chunk(next_id, count, seconds)
            next_id += count
            left -= count

    def _chunk(self, first_id: int, count: int, seconds: float) -> list[Message]:
        rng, shape = self.rng, self.shape
        hot_share = shape.hot_messages / shape.messages
        chat_ids = np.where(rng.random(count) < hot_share, 1, rng.integers(2, shape.chats + 1, count))
        lengths = np.clip(rng.lognormal(np.log(8), 1.0, count).astype(int), 1, MAX_WORDS)
        drawn = self.words[rng.choice(len(self.words), size=int(lengths.sum()), p=self.weights)]
        for index in np.flatnonzero(rng.random(len(drawn)) < TYPO_RATE):
            drawn[index] = typo(drawn[index], rng)
        messages, offset = [], 0
        for i in range(count):
            chat = self.chats[int(chat_ids[i]) - 1]
            chat.messages += 1
            text = drawn[offset : offset + lengths[i]]
            offset += lengths[i]
            content = " ".join(text)
            if chat.id in self.watched:
                self.watched[chat.id].update(text)
                if len(self.samples[chat.id]) < 2_000:
                    self.samples[chat.id].append(content)
            message_id = first_id + i
            messages.append(
                Message(message_id, chat.id, chat.messages, content, START + timedelta(seconds=message_id * seconds))
            )
        return messages


def typo(word: str, rng: np.random.Generator) -> str:
    """One edit of ``word``: a character dropped, doubled, swapped with the next, or replaced."""
    if len(word) < 3:
        return word
    at = int(rng.integers(len(word) - 1))
    kind = int(rng.integers(4))
    if kind == 0:
        return word[:at] + word[at + 1 :]
    if kind == 1:
        return word[:at] + word[at] + word[at:]
    if kind == 2:
        return word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return word[:at] + chr(ord("a") + int(rng.integers(26))) + word[at + 1 :]
