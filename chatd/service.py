"""Domain operations behind the HTTP API. No aiohttp here: handlers parse, this decides."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import orjson

from chatd import jobs, logs, metrics, tracing
from chatd.accepting import Acceptor, CeilingReached
from chatd.caching import OptionalCache
from chatd.domain import (
    Application,
    Chat,
    ChatJob,
    CursorPage,
    Message,
    MessageJob,
    NumberScope,
    Page,
    Rotated,
    SearchHit,
    SearchResult,
)
from chatd.errors import BackendUnavailable, Forbidden, NotFound, Pending
from chatd.limits.book import LimitBook
from chatd.limits.limiter import Limiter
from chatd.limits.policies import READS, SEARCHES, WRITES, Limits
from chatd.ports import Backends

T = TypeVar("T")

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# How long a process uses a token's id from its own memo before it looks the token up again:
# the bound on how late another process's rotation or revocation reaches this one's writes.
REF_RECHECK_SECONDS = 1.0


def utc_now() -> datetime:
    """Now, truncated to milliseconds so every backend stores and shows the same instant."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class ChatService:
    """Creates and reads applications, chats and messages.

    Chat and message creation is asynchronous: the number comes from an atomic counter in
    the store, the job goes to a durable queue, and the workers store it later.
    """

    def __init__(
        self,
        backends: Backends,
        *,
        cache_ttl: float = 1800.0,
        idempotency_ttl: float = 86400.0,
        groups_in_flight: int = 2,
        max_pending_creations: int = 1024,
        numbering_timeout: float = 5.0,
        max_chats_per_application: int = 0,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        limiter: Limiter | None = None,
    ):
        self.backends = backends
        self.store = backends.store
        # The GET routes' chats and messages: a replica's while it keeps up (``ReplicaReads``).
        self.reads = backends.reads or backends.store
        self.cache = OptionalCache(backends.cache)
        self.queue = backends.queue
        self.search_index = backends.search
        self.cache_ttl = cache_ttl
        self.clock = clock
        self.monotonic = monotonic
        # 0: no limit. Enforced where the number is taken (``NumberRequest.ceiling``).
        self.max_chats_per_application = max_chats_per_application
        self.acceptor = Acceptor(
            backends.store,
            backends.queue,
            idempotency_ttl=idempotency_ttl,
            max_in_flight=groups_in_flight,
            max_pending=max_pending_creations,
            numbering_timeout=numbering_timeout,
        )
        # Per-application rate limits (None: off); each operation counts once it knows the application.
        self.limiter = limiter
        self._refs: OrderedDict[str, ApplicationRef] = OrderedDict()
        self._chats_seen: OrderedDict[int, int] = OrderedDict()

    # Applications

    async def create_application(self, name: str) -> Application:
        return await self.store.create_application(secrets.token_urlsafe(24), name, self.clock())

    async def application(self, token: str) -> Application:
        """The application ``token`` names: its current token, or its previous one until it expires.

        Looked up in the cache that every process shares, which a rotation or a revocation
        empties of the tokens it changed; an expiry is checked on every lookup.
        """
        _require_canonical(token)
        key = f"app:{token}"
        cached = await self.cache.get(key)
        app = _application_from_cache(cached) if cached is not None else await self.store.get_application(token)
        if app is None:
            raise NotFound("no application has this token", code="application_not_found")
        ttl = self.cache_ttl
        if app.token_expires_at is not None:  # a previous token: its clock is read once
            ttl = min(ttl, (app.token_expires_at - self.clock()).total_seconds())
            if ttl <= 0:
                raise NotFound("no application has this token", code="application_not_found")
        logs.application_id.set(app.id)  # for the access log
        if cached is None:
            await self.cache.set(key, _application_to_cache(app), ttl)
        return app

    async def show_application(self, token: str) -> Application:
        return await self._reading(token)

    async def token_works(self, token: str) -> bool:
        """Whether ``token`` still names an application (a store that cannot answer: assumed so)."""
        try:
            await self.application(token)
        except NotFound:
            return False
        except BackendUnavailable:
            return True
        return True

    async def rotate_token(self, token: str, grace_seconds: float) -> tuple[Rotated, datetime]:
        """Give the application a new token; ``token`` keeps working ``grace_seconds`` more (0: revoked now).

        Only the current token rotates: its previous one, still working, would otherwise hand
        whoever holds it the new one. Returns the rotation and when the old token stops.
        """
        await self._admit((await self.application(token)).id, WRITES)  # application() checks the form
        now = self.clock()
        expires_at = now + timedelta(seconds=grace_seconds)
        rotated = await self.store.rotate_token(
            token, secrets.token_urlsafe(24), expires_at if grace_seconds > 0 else None
        )
        if rotated is None:
            await self._refuse_previous(token, "rotate")
            raise NotFound("no application has this token", code="application_not_found")
        await self._forget_tokens([rotated.superseded, rotated.revoked])
        kind = "rotated" if grace_seconds > 0 else "rotated_and_revoked"
        metrics.TOKEN_CHANGES.labels(kind).inc()
        logger.info(
            "application token %s", kind.replace("_", " "),
            extra={"application_id": rotated.application.id, "grace_seconds": grace_seconds},
        )  # fmt: skip
        return rotated, expires_at

    async def revoke_previous_token(self, token: str) -> None:
        """The application's previous token stops working now, on every process within a second."""
        await self._admit((await self.application(token)).id, WRITES)
        revoked = await self.store.revoke_previous_token(token)
        if revoked is None:
            await self._refuse_previous(token, "revoke")
            raise NotFound("no application has this token", code="application_not_found")
        application_id, previous = revoked
        await self._forget_tokens([previous])
        if previous is not None:
            metrics.TOKEN_CHANGES.labels("revoked").inc()
            logger.info("application token revoked", extra={"application_id": application_id})

    async def _refuse_previous(self, token: str, what: str) -> None:
        app = await self.store.get_application(token)
        if app is not None and app.token_expires_at is not None and app.token_expires_at > self.clock():
            raise Forbidden(
                f"this token was rotated away: {what} with the application's current token",
                code="token_superseded",
            )

    async def _forget_tokens(self, tokens: list[str | None]) -> None:
        """Drop what every process cached of ``tokens``: the shared cache now, the memos within a second."""
        gone = [token for token in tokens if token is not None]
        for token in gone:
            self._refs.pop(token, None)
        await self.forget_applications(gone)

    async def list_applications(self, page: int, per_page: int) -> Page[Application]:
        return await self.store.list_applications(page, per_page)

    async def rename_application(self, token: str, name: str) -> Application:
        known = await self.application(token)
        await self._admit(known.id, WRITES)
        app = await self.store.rename_application(known.id, name)
        if app is None:
            raise NotFound("no application has this token", code="application_not_found")
        await self.forget_applications([app.token, token])
        # Answered with the token it was asked with: a previous token never shows the current one.
        return replace(app, token=token, token_expires_at=known.token_expires_at)

    async def forget_applications(self, tokens: list[str]) -> None:
        for token in tokens:
            await self.cache.delete(f"app:{token}")

    # Chats

    async def create_chat(self, token: str, idempotency_key: str | None = None) -> int:
        app = await self._application_ref(token)
        await self._admit(app.id, WRITES)

        def make_job(number: int) -> bytes:
            return jobs.encode_chat(ChatJob(app.id, number, self.clock()))

        try:
            return await self.acceptor.accept(
                NumberScope(app.id), jobs.CHATS, make_job, idempotency_key, "chat", self.max_chats_per_application
            )
        except CeilingReached as reached:
            raise Forbidden(
                f"this application has reached its limit of {reached.ceiling} chats", code="chat_limit_reached"
            ) from None

    async def chat(self, token: str, number: int) -> Chat:
        app = await self._reading(token)
        chat = await self.reads.get_chat(app.id, number)
        if chat is not None:
            return chat
        if await self._was_handed_out(NumberScope(app.id), number):
            raise Pending(f"chat {number} is accepted and not stored yet")
        raise NotFound(f"chat {number} does not exist", code="chat_not_found")

    async def list_chats(self, token: str, page: int, per_page: int) -> Page[Chat]:
        app = await self._reading(token)
        return await self.reads.list_chats(app.id, page, per_page)

    async def list_chats_after(self, token: str, after: int, limit: int) -> CursorPage[Chat]:
        app = await self._reading(token)
        # One row past the page tells whether there is a next page, without a COUNT.
        chats = await self.reads.list_chats_after(app.id, after, limit + 1)
        return _cursor_page(chats, after, limit, lambda chat: chat.number)

    # Messages

    async def create_message(
        self, token: str, chat_number: int, content: str, idempotency_key: str | None = None
    ) -> int:
        app = await self._application_ref(token)
        await self._admit(app.id, WRITES)
        await self._require_chat(app, chat_number)

        trace = tracing.current_traceparent()  # the request's span, while tracing is on

        def make_job(number: int) -> bytes:
            return jobs.encode_message(MessageJob(app.id, chat_number, number, content, self.clock(), trace))

        scope = NumberScope(app.id, chat_number)
        fingerprint = ""
        if idempotency_key is not None:
            digest = hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
            fingerprint = f"message:{chat_number}:{digest}"
        return await self.acceptor.accept(scope, jobs.MESSAGES, make_job, idempotency_key, fingerprint)

    async def message(self, token: str, chat_number: int, number: int) -> Message:
        app = await self._reading(token)
        message = await self.reads.get_message(app.id, chat_number, number)
        if message is not None:
            return message
        await self._explain_missing(app, chat_number, number)

    async def _explain_missing(self, app: Application, chat_number: int, number: int) -> NoReturn:
        """Raise the precise 404 of a message not in the store: no chat, pending, or never handed out."""
        await self._require_chat(app, chat_number)
        if await self._was_handed_out(NumberScope(app.id, chat_number), number):
            raise Pending(f"message {number} is accepted and not stored yet")
        raise NotFound(f"message {number} does not exist", code="message_not_found")

    async def list_messages(self, token: str, chat_number: int, page: int, per_page: int) -> Page[Message]:
        app = await self._reading(token)
        await self._require_chat(app, chat_number)
        return await self.reads.list_messages(app.id, chat_number, page, per_page)

    async def list_messages_after(self, token: str, chat_number: int, after: int, limit: int) -> CursorPage[Message]:
        app = await self._reading(token)
        await self._require_chat(app, chat_number)
        messages = await self.reads.list_messages_after(app.id, chat_number, after, limit + 1)
        return _cursor_page(messages, after, limit, lambda message: message.number)

    async def edit_message(self, token: str, chat_number: int, number: int, content: str) -> Message:
        app = await self.application(token)
        await self._admit(app.id, WRITES)
        updated_at = self.clock()
        document = await self.store.update_message(app.id, chat_number, number, content, updated_at)
        if document is None:
            await self._explain_missing(app, chat_number, number)
        # Committed with its outbox row: the edit relay (chatd/workers/edit_relay.py) queues its
        # index job, so a broker that is down delays the index instead of failing a stored edit.
        # What this edit wrote, not a read-back: a concurrent edit may have landed since.
        return Message(number, document.content, document.created_at, updated_at, document.revision)

    async def search(self, token: str, chat_number: int, query: str, page: int, per_page: int) -> SearchResult:
        app = await self._reading(token, SEARCHES)
        await self._require_chat(app, chat_number)
        return await self.search_index.search(app.id, chat_number, query, page, per_page)

    async def search_after(
        self, token: str, chat_number: int, query: str, after: int, limit: int
    ) -> CursorPage[SearchHit]:
        app = await self._reading(token, SEARCHES)
        await self._require_chat(app, chat_number)
        result = await self.search_index.search_after(app.id, chat_number, query, after, limit + 1)
        return _cursor_page(result.hits, after, limit, lambda hit: hit.message_number, result.total)

    # Live events

    async def live_head(self, token: str, chat_number: int | None) -> tuple[Application, int]:
        """Check that a live subscription names something that exists (else the usual 404).

        Returns the application and the last number handed out in the chat (``None``: among
        the application's chats): where a subscription without a resume point starts.
        """
        app = await self.application(token)
        if chat_number is not None:
            await self._require_chat(app, chat_number)
        return app, await self.store.last_number(NumberScope(app.id, chat_number))

    # Rate limits

    async def _reading(self, token: str, policy: str = READS) -> Application:
        """The application ``token`` names, with this request counted against its ``policy``."""
        app = await self.application(token)
        await self._admit(app.id, policy)
        return app

    async def _admit(self, application_id: int, policy: str) -> None:
        if self.limiter is not None:
            await self.limiter.admit(application_id, policy)

    async def limits(self, token: str) -> Limits:
        """The application's limits (its overrides and the defaults), for the admin endpoint."""
        book = self._limit_book()
        return await book.limits((await self._reading(token)).id)

    async def set_limits(self, token: str, overrides: dict[str, float]) -> Limits:
        """Replace the application's overrides (empty: every default); applies from the next request."""
        book = self._limit_book()
        app = await self.application(token)
        limits = await book.set(app.id, overrides)
        logger.info("application rate limits set", extra={"application_id": app.id, "overrides": overrides})
        return limits

    def _limit_book(self) -> LimitBook:
        if self.limiter is None:
            raise NotFound("rate limits are off on this server (CHATD_RATE_LIMITS=0)", code="not_found")
        return self.limiter.book

    # Numbers

    async def _was_handed_out(self, scope: NumberScope, number: int) -> bool:
        """Whether ``number`` was handed out in ``scope``: not past the counter, and not burnt by a restore."""
        if not 1 <= number <= await self.store.last_number(scope):
            return False
        return not await self.store.is_burnt(scope, number)

    async def _require_chat(self, app: Application | ApplicationRef, chat_number: int) -> None:
        """A chat exists once its number is handed out, even before a worker stores it.

        Numbers handed out stay handed out, so the highest seen per application is kept in
        the process: the hot path (messages to known chats) asks the store nothing.
        """
        if chat_number <= self._chats_seen.get(app.id, 0):
            return
        scope = NumberScope(app.id)
        if not await self._was_handed_out(scope, chat_number):
            raise NotFound(f"chat {chat_number} does not exist", code="chat_not_found")
        self._chats_seen[app.id] = max(chat_number, self._chats_seen.get(app.id, 0))
        trim_memo(self._chats_seen)

    async def _application_ref(self, token: str) -> ApplicationRef:
        """The application's id for the write paths, kept by the process for up to a second.

        Ids never change, but tokens do (a rotation, a revocation in another process): a token
        is looked up again (in the shared cache) once its entry is a second old, and an entry
        whose token expires is not used past that.
        """
        ref = self._refs.get(token)
        now = self.monotonic()
        if (
            ref is None
            or now - ref.checked > REF_RECHECK_SECONDS
            or (ref.expires_at is not None and ref.expires_at <= self.clock())
        ):
            app = await self.application(token)
            ref = self._refs[token] = ApplicationRef(app.id, now, app.token_expires_at)
            trim_memo(self._refs)
        logs.application_id.set(ref.id)  # for the access log
        return ref


@dataclass(frozen=True)
class ApplicationRef:
    """What the write paths need of an application: its id, which never changes."""

    id: int
    # When the token was last looked up (time.monotonic), and when it stops working (None: current).
    checked: float = 0.0
    expires_at: datetime | None = None


# Tokens are made by secrets.token_urlsafe: anything else names no application. Refusing it
# before any lookup keeps engines that compare loosely (MariaDB pads trailing spaces) from
# matching it, and keeps such spellings out of the cache, where a rename would not reach them.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _require_canonical(token: str) -> None:
    if _TOKEN.fullmatch(token) is None:
        raise NotFound("no application has this token", code="application_not_found")


def _application_to_cache(app: Application) -> bytes:
    return orjson.dumps(
        {
            "id": app.id,
            "token": app.token,
            "name": app.name,
            "chats_count": app.chats_count,
            "created_at": app.created_at.isoformat(),
            "token_expires_at": None if app.token_expires_at is None else app.token_expires_at.isoformat(),
        }
    )


def _application_from_cache(raw: bytes) -> Application:
    data = orjson.loads(raw)
    expires = data.get("token_expires_at")
    return Application(
        data["id"],
        data["token"],
        data["name"],
        data["chats_count"],
        datetime.fromisoformat(data["created_at"]),
        None if expires is None else datetime.fromisoformat(expires),
    )


def _cursor_page(
    items: list[T], after: int, limit: int, number: Callable[[T], int], total: int | None = None
) -> CursorPage[T]:
    """Cut a keyset read of ``limit + 1`` items to the page; the extra item means a next page exists."""
    page = items[:limit]
    next_after = number(page[-1]) if len(items) > limit and page else None
    return CursorPage(page, after, limit, next_after, total)


def trim_memo(entries: OrderedDict[Any, Any], limit: int = 100_000) -> None:
    """Keep a per-process memo bounded: drop the entries added (or refreshed) first."""
    while len(entries) > limit:
        entries.popitem(last=False)
