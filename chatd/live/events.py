"""Live events: what a fan-out announcement carries, and how a subscriber receives it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from chatd.domain import Chat, Message, SearchDocument
from chatd.jobs import format_time, parse_time

MESSAGE_CREATED = "message.created"
MESSAGE_UPDATED = "message.updated"
CHAT_CREATED = "chat.created"
KINDS = (MESSAGE_CREATED, MESSAGE_UPDATED, CHAT_CREATED)

# The feed of an application's chat events: chat numbers start at 1, so 0 names no chat.
APPLICATION_FEED = 0


@dataclass(frozen=True)
class LiveEvent:
    """One event of one feed: a message of a chat, or a chat of an application.

    ``number`` is the message number (the chat number for ``chat.created``) and orders the
    feed; ``at`` is when the API accepted the record (seconds since the epoch), which tells
    an old hole in the numbers from one still being filled.
    """

    kind: str
    application_id: int
    chat_number: int
    number: int
    created_at: str
    at: float
    content: str | None = None
    updated_at: str | None = None
    revision: int | None = None
    # Stored after the subscriber passed its number (a skipped hole): sent out of order, marked.
    late: bool = False
    # The event id to send with it, when it is not its own number (a subscriber still awaiting a
    # late number below: ``Feed``); one subscriber's copy, never cached in a feed.
    resume_id: int | None = None
    _data: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @property
    def feed(self) -> tuple[int, int]:
        """The feed this event belongs to: (application id, chat number or APPLICATION_FEED)."""
        if self.kind == CHAT_CREATED:
            return (self.application_id, APPLICATION_FEED)
        return (self.application_id, self.chat_number)

    def data(self) -> bytes:
        """The JSON a client receives, encoded once however many subscribers get it."""
        if not self._data:
            self._data.append(orjson.dumps(self.client_view()))
        return self._data[0]

    def client_view(self) -> dict[str, Any]:
        if self.kind == CHAT_CREATED:
            view: dict[str, Any] = {"number": self.number, "created_at": self.created_at}
        elif self.kind == MESSAGE_CREATED:
            view = {"number": self.number, "content": self.content, "created_at": self.created_at}
        else:
            return {
                "number": self.number,
                "content": self.content,
                "updated_at": self.updated_at,
                "revision": self.revision,
            }
        if self.late:
            view["late"] = True
        return view

    def as_late(self) -> LiveEvent:
        """This record, sent after the numbers above it (its JSON says ``"late": true``)."""
        return replace(self, late=True, resume_id=None, _data=[])

    def resumed_at(self, resume_id: int) -> LiveEvent:
        """This event with ``resume_id`` as its event id (the same JSON, encoded once)."""
        return replace(self, resume_id=resume_id, _data=self._data)

    def with_update(self, update: LiveEvent) -> LiveEvent:
        """This ``message.created`` event as it reads after ``update`` (for those yet to receive it)."""
        return LiveEvent(
            MESSAGE_CREATED, self.application_id, self.chat_number, self.number, self.created_at, self.at,
            update.content, update.updated_at, update.revision,
        )  # fmt: skip


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def message_created(document: SearchDocument) -> LiveEvent:
    """The event of a message a worker stored (as the store returned it)."""
    return LiveEvent(
        MESSAGE_CREATED, document.application_id, document.chat_number, document.message_number,
        format_time(document.created_at), _epoch(document.created_at), document.content,
        revision=document.revision,
    )  # fmt: skip


def message_updated(document: SearchDocument, updated_at: datetime) -> LiveEvent:
    """The event of an edit, as the edit wrote it."""
    return LiveEvent(
        MESSAGE_UPDATED, document.application_id, document.chat_number, document.message_number,
        format_time(document.created_at), _epoch(document.created_at), document.content,
        format_time(updated_at), document.revision,
    )  # fmt: skip


def stored_message(application_id: int, chat_number: int, message: Message) -> LiveEvent:
    """A ``message.created`` event read back from the store (a replay), with its current content."""
    return LiveEvent(
        MESSAGE_CREATED, application_id, chat_number, message.number, format_time(message.created_at),
        _epoch(message.created_at), message.content, revision=message.revision,
    )  # fmt: skip


def chat_created(application_id: int, chat_number: int, created_at: datetime) -> LiveEvent:
    return LiveEvent(
        CHAT_CREATED, application_id, chat_number, chat_number, format_time(created_at), _epoch(created_at)
    )


def stored_chat(application_id: int, chat: Chat) -> LiveEvent:
    return chat_created(application_id, chat.number, chat.created_at)


def _row(e: LiveEvent) -> list[Any]:
    return [e.kind, e.application_id, e.chat_number, e.number, e.created_at, e.content, e.updated_at, e.revision]


def encode_announcement(events: Sequence[LiveEvent]) -> bytes:
    """One announcement: a batch of events as compact JSON arrays."""
    return orjson.dumps([_row(e) for e in events])


def decode_announcement(body: bytes) -> list[LiveEvent]:
    """The events of an announcement; raises ValueError for a body this version cannot read."""
    try:
        rows = orjson.loads(body)
        return [_decode_row(row) for row in rows]
    except (orjson.JSONDecodeError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"unreadable announcement: {exc}") from exc


def _decode_row(row: list[Any]) -> LiveEvent:
    kind, application_id, chat_number, number, created_at, content, updated_at, revision = row
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    at = _epoch(parse_time(created_at))
    return LiveEvent(
        kind, int(application_id), int(chat_number), int(number), created_at, at, content, updated_at, revision
    )


def split_announcements(events: Iterable[LiveEvent], max_bytes: int) -> list[bytes]:
    """Announcements of at most ``max_bytes`` each (one event alone may exceed it).

    Each event is encoded once: an announcement is its rows joined into one JSON array.
    """
    bodies: list[bytes] = []
    chunk: list[bytes] = []
    size = 2
    for event in events:
        row = orjson.dumps(_row(event))
        if chunk and size + len(row) + 1 > max_bytes:
            bodies.append(b"[" + b",".join(chunk) + b"]")
            chunk, size = [], 2
        chunk.append(row)
        size += len(row) + 1
    if chunk:
        bodies.append(b"[" + b",".join(chunk) + b"]")
    return bodies
