"""Domain operations behind the HTTP API. No aiohttp here: handlers parse, this decides."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from chatd import jobs, logs, tracing
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
    SearchHit,
    SearchResult,
)
from chatd.errors import Forbidden, NotFound, Pending
from chatd.ports import Backends

T = TypeVar("T")

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


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
    ):
        self.backends = backends
        self.store = backends.store
        self.cache = OptionalCache(backends.cache)
        self.queue = backends.queue
        self.search_index = backends.search
        self.cache_ttl = cache_ttl
        self.clock = clock
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
        self._refs: OrderedDict[str, ApplicationRef] = OrderedDict()
        self._chats_seen: OrderedDict[int, int] = OrderedDict()

    # Applications

    async def create_application(self, name: str) -> Application:
        return await self.store.create_application(secrets.token_urlsafe(24), name, self.clock())

    async def application(self, token: str) -> Application:
        _require_canonical(token)
        key = f"app:{token}"
        cached = await self.cache.get(key)
        if cached is not None:
            known = _application_from_cache(cached)
            logs.application_id.set(known.id)  # for the access log
            return known
        app = await self.store.get_application(token)
        if app is None:
            raise NotFound("no application has this token", code="application_not_found")
        logs.application_id.set(app.id)
        await self.cache.set(key, _application_to_cache(app), self.cache_ttl)
        return app

    async def list_applications(self, page: int, per_page: int) -> Page[Application]:
        return await self.store.list_applications(page, per_page)

    async def rename_application(self, token: str, name: str) -> Application:
        _require_canonical(token)
        app = await self.store.rename_application(token, name)
        if app is None:
            raise NotFound("no application has this token", code="application_not_found")
        await self.forget_applications([token])
        return app

    async def forget_applications(self, tokens: list[str]) -> None:
        for token in tokens:
            await self.cache.delete(f"app:{token}")

    # Chats

    async def create_chat(self, token: str, idempotency_key: str | None = None) -> int:
        app = await self._application_ref(token)

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
        app = await self.application(token)
        chat = await self.store.get_chat(app.id, number)
        if chat is not None:
            return chat
        if await self._was_handed_out(NumberScope(app.id), number):
            raise Pending(f"chat {number} is accepted and not stored yet")
        raise NotFound(f"chat {number} does not exist", code="chat_not_found")

    async def list_chats(self, token: str, page: int, per_page: int) -> Page[Chat]:
        app = await self.application(token)
        return await self.store.list_chats(app.id, page, per_page)

    async def list_chats_after(self, token: str, after: int, limit: int) -> CursorPage[Chat]:
        app = await self.application(token)
        # One row past the page tells whether there is a next page, without a COUNT.
        chats = await self.store.list_chats_after(app.id, after, limit + 1)
        return _cursor_page(chats, after, limit, lambda chat: chat.number)

    # Messages

    async def create_message(
        self, token: str, chat_number: int, content: str, idempotency_key: str | None = None
    ) -> int:
        app = await self._application_ref(token)
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
        app = await self.application(token)
        message = await self.store.get_message(app.id, chat_number, number)
        if message is not None:
            return message
        await self._require_chat(app, chat_number)
        if await self._was_handed_out(NumberScope(app.id, chat_number), number):
            raise Pending(f"message {number} is accepted and not stored yet")
        raise NotFound(f"message {number} does not exist", code="message_not_found")

    async def list_messages(self, token: str, chat_number: int, page: int, per_page: int) -> Page[Message]:
        app = await self.application(token)
        await self._require_chat(app, chat_number)
        return await self.store.list_messages(app.id, chat_number, page, per_page)

    async def list_messages_after(self, token: str, chat_number: int, after: int, limit: int) -> CursorPage[Message]:
        app = await self.application(token)
        await self._require_chat(app, chat_number)
        messages = await self.store.list_messages_after(app.id, chat_number, after, limit + 1)
        return _cursor_page(messages, after, limit, lambda message: message.number)

    async def edit_message(self, token: str, chat_number: int, number: int, content: str) -> Message:
        app = await self.application(token)
        updated_at = self.clock()
        document = await self.store.update_message(app.id, chat_number, number, content, updated_at)
        if document is None:
            await self.message(token, chat_number, number)  # raises the precise 404
            raise NotFound(f"message {number} does not exist", code="message_not_found")
        # Committed with its outbox row: the edit relay (chatd/workers/edit_relay.py) queues its
        # index job, so a broker that is down delays the index instead of failing a stored edit.
        # What this edit wrote, not a read-back: a concurrent edit may have landed since.
        return Message(number, document.content, document.created_at, updated_at, document.revision)

    async def search(self, token: str, chat_number: int, query: str, page: int, per_page: int) -> SearchResult:
        app = await self.application(token)
        await self._require_chat(app, chat_number)
        return await self.search_index.search(app.id, chat_number, query, page, per_page)

    async def search_after(
        self, token: str, chat_number: int, query: str, after: int, limit: int
    ) -> CursorPage[SearchHit]:
        app = await self.application(token)
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

    # Numbers

    async def _was_handed_out(self, scope: NumberScope, number: int) -> bool:
        return 1 <= number <= await self.store.last_number(scope)

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
        """The application's id for the write paths: ids never change, so the process keeps them."""
        ref = self._refs.get(token)
        if ref is None:
            app = await self.application(token)
            ref = self._refs[token] = ApplicationRef(app.id)
            trim_memo(self._refs)
        logs.application_id.set(ref.id)  # for the access log
        return ref


@dataclass(frozen=True)
class ApplicationRef:
    """What the write paths need of an application: its id, which never changes."""

    id: int


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
        }
    )


def _application_from_cache(raw: bytes) -> Application:
    data = orjson.loads(raw)
    return Application(
        data["id"], data["token"], data["name"], data["chats_count"], datetime.fromisoformat(data["created_at"])
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
