"""The interfaces between chatd's domain code and its backends.

Each port is shaped for the production engine behind it (MySQL, Redis, RabbitMQ,
Elasticsearch); the embedded backends implement the same contract, which
``tests/contract`` checks for every implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Self

from chatd.domain import (
    Application,
    Chat,
    ChatJob,
    CountsReconciled,
    EditedMessage,
    Hit,
    Message,
    MessageJob,
    NumberScope,
    OutboxEdits,
    Page,
    Rotated,
    SearchDocument,
    SearchResult,
)
from chatd.numbering import NumberRequest, SequenceState, Taken


class Backend(Protocol):
    """What every backend offers for its lifecycle and for ``/readyz``.

    ``async with backend:`` opens and closes it (``chatd.backends.lifecycle.Lifecycle``).
    """

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def ping(self) -> None:
        """Raise if the backend cannot serve requests right now."""


class StoreReads(Protocol):
    """The reads of the API's GET routes that may lag a little (a replica's, when there is one)."""

    async def get_chat(self, application_id: int, number: int) -> Chat | None: ...

    async def list_chats(self, application_id: int, page: int, per_page: int) -> Page[Chat]: ...

    async def list_chats_after(self, application_id: int, after: int, limit: int) -> list[Chat]: ...

    async def get_message(self, application_id: int, chat_number: int, number: int) -> Message | None: ...

    async def list_messages(self, application_id: int, chat_number: int, page: int, per_page: int) -> Page[Message]: ...

    async def list_messages_after(
        self, application_id: int, chat_number: int, after: int, limit: int
    ) -> list[Message]: ...


class Store(Backend, Protocol):
    """The source of truth: applications, chats, messages and their counts."""

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the names of those applied."""

    async def create_application(self, token: str, name: str, created_at: datetime) -> Application: ...

    async def get_application(self, token: str) -> Application | None:
        """The application whose current or previous token is ``token``.

        Found by its previous token, it carries that token and its expiry (``token_expires_at``),
        expired or not: the caller compares it with its clock.
        """

    async def list_applications(self, page: int, per_page: int) -> Page[Application]: ...

    async def rename_application(self, application_id: int, name: str) -> Application | None: ...

    async def rotate_token(self, token: str, new_token: str, previous_expires_at: datetime | None) -> Rotated | None:
        """Give the application whose current token is ``token`` the token ``new_token``.

        ``token`` becomes its previous token until ``previous_expires_at`` (None: revoked at once);
        a previous token it had is revoked. None if no application has ``token`` as its current one.
        """

    async def revoke_previous_token(self, token: str) -> tuple[int, str | None] | None:
        """Revoke the previous token of the application whose current token is ``token``.

        Returns its id and the token revoked (None if it had none); None if no application has
        ``token`` as its current one.
        """

    async def save_chats(self, jobs: Sequence[ChatJob]) -> None:
        """Store chats idempotently: a job seen before changes nothing."""

    async def save_messages(self, jobs: Sequence[MessageJob]) -> list[SearchDocument]:
        """Store messages idempotently, creating their chats if a chat job is still in flight.

        Returns the stored version of every job's message (also of those stored before),
        so that the caller can hand all of them to the indexer. Jobs naming an unknown
        application are skipped and not returned.
        """

    async def get_chat(self, application_id: int, number: int) -> Chat | None: ...

    async def list_chats(self, application_id: int, page: int, per_page: int) -> Page[Chat]: ...

    async def list_chats_after(self, application_id: int, after: int, limit: int) -> list[Chat]:
        """Up to ``limit`` stored chats numbered above ``after``, by number (a keyset page).

        Reads on the unique (application, number) index: the cost is ``limit`` rows however
        deep the page, unlike an OFFSET. No total is counted.
        """

    async def get_message(self, application_id: int, chat_number: int, number: int) -> Message | None: ...

    async def list_messages(self, application_id: int, chat_number: int, page: int, per_page: int) -> Page[Message]: ...

    async def list_messages_after(self, application_id: int, chat_number: int, after: int, limit: int) -> list[Message]:
        """Up to ``limit`` stored messages of the chat numbered above ``after``, by number (a keyset page).

        Reads on the unique (chat, number) index; an unknown chat has none. No total is counted.
        Each message carries its ``revision`` (the live replay compares it with edits in flight).
        """

    async def update_message(
        self, application_id: int, chat_number: int, number: int, content: str, updated_at: datetime
    ) -> SearchDocument | None:
        """Change a stored message; the returned document carries the new revision.

        In the same transaction, the edit is written to the outbox (``edits_to_relay``) and the
        message's last-edit time is recorded (``recent_edits``): an edit that commits is relayed
        to the search index and the live subscribers whatever happens after the commit.
        """

    async def edits_to_relay(self, limit: int) -> OutboxEdits:
        """The oldest ``limit`` edits of the outbox, with the messages they name as they read now."""

    async def forget_relayed_edits(self, ids: Sequence[int]) -> None:
        """Delete outbox rows once their index jobs are durably queued (ids already gone are ignored)."""

    async def recent_edits(
        self, application_id: int, chat_number: int, up_to: int, since: datetime, limit: int
    ) -> list[EditedMessage]:
        """Messages of the chat numbered ``up_to`` or less whose last edit is at ``since`` or later.

        The ``limit`` most recently edited of them, by message number: what a live client
        resuming after ``up_to`` may have missed. Reads an index of last-edit times per chat.
        """

    async def identity(self) -> str:
        """A random id this store keeps for life, made the first time it is asked for.

        Files derived from a store (the embedded search index) record it, so that a file left
        over from another store is rebuilt instead of answering for this one.
        """

    async def take_numbers(self, requests: Sequence[NumberRequest], now: float, key_ttl_seconds: float) -> list[Taken]:
        """Number a group of creations in one transaction, recording their idempotency keys in it.

        Each request without a key, or with a key not recorded (or expired at ``now``, seconds
        since the epoch), takes the next number of its scope's counter; a key is recorded with
        that number and the request's fingerprint until ``now + key_ttl_seconds``. A request whose
        key is recorded replays its number if the fingerprints match, else is refused
        (``Taken.key_reused``). A request whose new number would pass its ``ceiling`` takes none
        (``Taken.limit_reached``) and leaves the counter at most at the ceiling (where it stood,
        if above). A number is handed out once: never again, whatever any other server forgets.
        Answers are in the order of ``requests``.
        """

    async def last_number(self, scope: NumberScope) -> int:
        """The last number handed out in ``scope`` (0 if none)."""

    async def forget_idempotency_keys(self, now: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` idempotency records expired at ``now``; return how many."""

    async def reconcile_counts(self, limit: int = 10_000) -> CountsReconciled:
        """Fold up to ``limit`` pending count deltas into the counts, in one transaction.

        Safe to interrupt: an interrupted run applies nothing, and no delta applies twice,
        even when two reconcilers run at once.
        """

    async def recount_all(self) -> None:
        """Recompute every count from the stored rows (repair; not on any hot path)."""

    async def documents_after(self, cursor: int, limit: int) -> tuple[int, list[SearchDocument]]:
        """Up to ``limit`` stored messages past ``cursor`` (0 to start), and the cursor to go on from.

        Walks every message once, in storage order, for rebuilding the search index.
        """

    async def count_messages(self) -> int:
        """How many messages are stored (a rebuild's progress; counts the table, not for hot paths)."""

    async def sequences(self) -> dict[str, SequenceState]:
        """Where every sequence stands: each scope's key, and ``APPLICATION_IDS`` for the ids.

        What a backup records and a restore moves forward from; reads every chat (not for hot paths).
        """

    async def sequences_taken_since(self, since: datetime) -> dict[str, int]:
        """How many values each sequence handed out to rows created at ``since`` or later.

        A backup's measure of how fast each scope moves (reads every message; not for hot paths).
        """

    async def newest_row_at(self) -> datetime | None:
        """When the newest application, chat or message was created (None: the store is empty).

        A promoted replica's measure of how far it may lag behind its lost primary (reads every
        message's creation time on a store without an index on it: not for hot paths).
        """

    async def burn_numbers(self, ranges: Mapping[str, tuple[int, int]]) -> None:
        """Record, per scope key, that the numbers after ``low`` up to ``high`` are never handed out.

        A restore's skip: those numbers were lost with the old store or never used.
        """

    async def is_burnt(self, scope: NumberScope, number: int) -> bool:
        """Whether a restore burnt ``number`` in ``scope`` (404 paths only: not for hot paths)."""

    async def raise_sequences(self, floors: Mapping[str, int]) -> None:
        """Move sequences forward: each one's next value is above its floor (never moved back).

        For a restore, with every chatd process stopped (the ids' move is DDL on MySQL).
        """


class Cache(Backend, Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def clear(self) -> None:
        """Forget every value (a restore: nothing cached may outlive the store it came from)."""


class Lock(Backend, Protocol):
    """A lease held by one owner at a time across every process."""

    async def acquire(self, name: str, owner: str, ttl_seconds: float) -> bool: ...

    async def release(self, name: str, owner: str) -> None:
        """Release only if ``owner`` still holds it."""


@dataclass
class Delivery:
    """One job as a consumer received it."""

    body: bytes
    # Deliveries so far; jobs published together share one count until a broker splits them.
    attempts: int = 1
    tag: Any = field(default=None, repr=False)


class Queue(Backend, Protocol):
    """Durable job queues, one per topic ("chats", "messages", "index")."""

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        """Return only once every body is durably queued (publisher confirms).

        The bodies of one call may travel together (one broker message), so a caller with
        a batch publishes it in one call: the broker's cost is per message, not per job.
        """

    async def receive(self, topic: str, max_batch: int, max_wait: float) -> list[Delivery]:
        """Wait up to ``max_wait`` for jobs; return at most ``max_batch`` (maybe none).

        Jobs stay owned by this consumer until acked, retried or dead-lettered; a consumer
        that dies without doing so has its jobs delivered again. Jobs published in one call
        may be settled together: an ack is final once the others of that call are decided
        too, so a consumer that dies before may see acked jobs again (stores are idempotent).
        """

    async def ack(self, topic: str, deliveries: Sequence[Delivery]) -> None: ...

    async def retry(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        """Give jobs back for a later delivery."""

    async def release(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        """Give jobs back for a later delivery that does not count this one as an attempt.

        For jobs a backend outage stopped (BackendUnavailable): nothing was wrong with them, so
        however long the outage lasts, none of them comes nearer the dead-letter queue.
        """

    async def dead_letter(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        """Move poison jobs aside, out of the way of the others."""

    async def depth(self, topic: str) -> int:
        """Jobs waiting (not counting those delivered and not yet acked); 0 exactly when none wait.

        Where a broker counts messages that carry several jobs, the jobs are estimated from the
        jobs per message this process saw lately on the topic (exact while they resemble them).
        """


class SearchIndex(Backend, Protocol):
    """Full-text search over one chat's messages: prefix, typo-tolerant, case-insensitive."""

    async def index(self, documents: Sequence[SearchDocument]) -> list[SearchDocument]:
        """Write documents in bulk; return those that failed and should be retried."""

    async def search(self, application_id: int, chat_number: int, query: str, page: int, per_page: int) -> SearchResult:
        """Matches ordered by message number."""

    async def search_after(
        self, application_id: int, chat_number: int, query: str, after: int, limit: int
    ) -> SearchResult:
        """Up to ``limit`` matches numbered above ``after``, by number; ``total`` counts every match.

        A keyset page: unlike ``search``, it reaches matches at any depth (past Elasticsearch's
        result window too).
        """

    async def refresh(self) -> None:
        """Make everything indexed so far visible to search (tests and tools)."""

    async def documents_after(self, after: tuple[int, int, int] | None, limit: int) -> list[SearchDocument]:
        """Up to ``limit`` indexed documents past ``after``, in (application, chat, message) order.

        ``after``: the last document's ``(application_id, chat_number, message_number)``, or None
        to start. Walks the whole index: what a restore recovers from an index that outlived its
        store (the messages it holds that the backup does not).
        """


class LimitOverrides(Protocol):
    """The rate limits the admin set for an application, kept in the store (durable, unlike Redis)."""

    async def get_overrides(self, application_id: int) -> dict[str, float]:
        """The application's override fields (empty: every default applies)."""

    async def set_overrides(self, application_id: int, overrides: Mapping[str, float]) -> None:
        """Replace them (empty: back to the defaults)."""


class RateCounter(Protocol):
    """Token buckets shared by every api process (Redis), or a process's own (in-process)."""

    async def hit(self, key: str, interval: float, capacity: float, want: int = 1) -> Hit:
        """Count one request against the bucket ``key`` if it fits, taking up to ``want`` tokens (``limits.gcra``)."""


class StreamCounter(Protocol):
    """Live streams open at once per key, across every api process."""

    async def acquire(self, key: str, member: str, limit: int) -> tuple[bool, int]:
        """Count ``member`` as open unless ``limit`` are already; (taken, how many are open now)."""

    async def release(self, key: str, member: str) -> None: ...

    async def refresh(self) -> None:
        """Renew this process's open members, so that those of a process that died expire."""


@dataclass(frozen=True)
class Backends:
    store: Store
    cache: Cache
    queue: Queue
    search: SearchIndex
    lock: Lock
    # Connections several ports share (a SQLite file, a Redis client): opened before the ports
    # and closed after them by whoever opens the backends (``registry.opened``), never by a port.
    connections: tuple[AbstractAsyncContextManager[Any], ...] = ()
    # Per-application rate limits: the admin's overrides (in the store's database), and the
    # shared counters (Redis; None: each process counts on its own).
    overrides: LimitOverrides | None = None
    rates: RateCounter | None = None
    streams: StreamCounter | None = None
    # Where the GET routes read chats and messages (a replica's ``ReplicaReads``); None: the store.
    reads: StoreReads | None = None

    def all(self) -> list[Backend]:
        """Every backend once, in the order they are opened (closed in reverse)."""
        unique: dict[int, Backend] = {}
        for backend in (self.store, self.cache, self.lock, self.queue, self.search):
            unique.setdefault(id(backend), backend)
        return list(unique.values())
