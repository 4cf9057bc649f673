"""Domain records shared by the service, the workers and every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Application:
    id: int
    # The token the application was found by: its current one, or its previous one (rotated
    # away, still working until ``token_expires_at``; None for the current token).
    token: str
    name: str
    chats_count: int
    created_at: datetime
    token_expires_at: datetime | None = None


@dataclass(frozen=True)
class Rotated:
    """A rotation's outcome: the application under its new token, and the tokens that changed."""

    application: Application
    # The token rotated away (now the previous one, or revoked at once), and the previous token
    # it replaced, if any (revoked by this rotation): their cached lookups must go.
    superseded: str
    revoked: str | None


@dataclass(frozen=True)
class Chat:
    number: int
    messages_count: int
    created_at: datetime


@dataclass(frozen=True)
class Message:
    number: int
    content: str
    created_at: datetime
    updated_at: datetime
    # Known in the answer to an edit: the revision that edit wrote.
    revision: int | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    page: int
    per_page: int
    total: int

    @property
    def total_pages(self) -> int:
        return (self.total + self.per_page - 1) // self.per_page


@dataclass(frozen=True)
class CursorPage(Generic[T]):
    """A keyset page: the items numbered past ``after``, and where the next page starts.

    ``next_after`` is None on the last page. ``total`` is set only where it is cheap (search);
    list pages leave it out, as counting a chat on every page would cost O(chat) each time.
    """

    items: list[T]
    after: int
    limit: int
    next_after: int | None
    total: int | None = None


@dataclass(frozen=True)
class NumberScope:
    """What a counter numbers: an application's chats, or one chat's messages."""

    application_id: int
    chat_number: int | None = None

    @property
    def key(self) -> str:
        if self.chat_number is None:
            return f"chats:{self.application_id}"
        return f"messages:{self.application_id}:{self.chat_number}"


@dataclass(frozen=True)
class ChatJob:
    """A chat whose number the API handed out and whose row a worker must store."""

    application_id: int
    chat_number: int
    created_at: datetime


@dataclass(frozen=True)
class MessageJob:
    """A message whose number the API handed out and whose row a worker must store."""

    application_id: int
    chat_number: int
    message_number: int
    content: str
    created_at: datetime
    # The W3C traceparent of the request that accepted it, while tracing is on (chatd.tracing).
    trace: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SearchDocument:
    """One message as the search index holds it.

    ``revision`` grows with every edit; an index keeps the highest revision it has seen, so
    a late re-delivery of an older version never overwrites a newer one.
    """

    application_id: int
    chat_number: int
    message_number: int
    content: str
    created_at: datetime
    revision: int
    # Where its trace goes on (chatd.tracing), while tracing is on.
    trace: str | None = field(default=None, compare=False, repr=False)
    # A new message on its way from the message consumer to the indexer: its time to become
    # searchable counts in chatd_searchable_lag_seconds (an edit's or a reindex's does not).
    fresh: bool = field(default=False, compare=False, repr=False)

    @property
    def doc_id(self) -> str:
        return f"{self.application_id}:{self.chat_number}:{self.message_number}"

    @property
    def routing(self) -> str:
        return f"{self.application_id}:{self.chat_number}"


@dataclass(frozen=True)
class EditedMessage:
    """A message as its last edit left it: what the search index and live subscribers are told."""

    document: SearchDocument
    updated_at: datetime


@dataclass(frozen=True)
class OutboxEdits:
    """Edits waiting in the store's outbox (``Store.edits_to_relay``).

    ``ids`` are the outbox rows read, to forget once relayed; ``messages`` each message those
    rows name, once, as it reads now (at least as new as any of its waiting edits).
    """

    ids: list[int]
    messages: list[EditedMessage]


@dataclass(frozen=True)
class SearchHit:
    message_number: int
    content: str
    created_at: datetime


@dataclass(frozen=True)
class SearchResult:
    total: int
    hits: list[SearchHit]


@dataclass(frozen=True)
class CountsReconciled:
    """One reconciler fold: how many pending deltas it applied, and whose chats_count changed."""

    deltas: int
    application_tokens: list[str]


class Hit(NamedTuple):
    """One rate-limit check's outcome, in seconds from now (``chatd.limits.gcra``; a tuple: made on
    every request, it must be cheap)."""

    allowed: bool
    # Refused: how long until one request would be admitted. Admitted: 0.
    wait: float
    # How long until the bucket is full again (after the tokens taken, if admitted).
    reset: float
    # Tokens taken: 1 for the request itself, more when it asked for a lease; 0 when refused.
    taken: int = 1
