"""The aiohttp application: routes by role, and every resource as a cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from chatd import keys, shutdown, tracing
from chatd.backends.registry import make_backends, opened
from chatd.caching import OptionalCache
from chatd.deadlines import Deadlines
from chatd.errors import BackendUnavailable
from chatd.handlers import applications, chats, docs, events, health, limits, messages, page
from chatd.handlers.middleware import error_middleware
from chatd.handlers.protocol import add_routes
from chatd.limits.book import LimitBook
from chatd.limits.limiter import Limiter
from chatd.limits.policies import STREAM_LEASE_SECONDS
from chatd.limits.policies import defaults as limits_defaults
from chatd.live.announcing import announcing
from chatd.live.fanouts import make_fanout
from chatd.live_context import close_streams, live_context
from chatd.ports import Backends
from chatd.service import ChatService, Clock, utc_now
from chatd.settings import Settings
from chatd.supervisor import Supervisor
from chatd.workers.pipeline import Pipeline

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings, *, backends: Backends | None = None, run_workers: bool | None = None, clock: Clock = utc_now
) -> web.Application:
    """Build the application for ``settings.role``.

    ``api`` serves the HTTP API, ``worker`` runs the background loops (and serves only the
    health endpoints), ``all`` does both. Tests may pass ``run_workers=False`` to drive the
    pipeline themselves with ``app[keys.PIPELINE].run_until_idle()``.
    """
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[*tracing.middlewares(), error_middleware]
    )
    app[keys.SETTINGS] = settings
    app[keys.DEADLINES] = Deadlines()
    add_routes(app, health.routes)
    if settings.role in ("all", "api"):
        # The hot path first: aiohttp tries the resources under one prefix in order.
        for module in (messages, chats, applications, limits, docs, events, page):
            add_routes(app, module.routes)
        applications.warn_about_access(settings)
    workers = settings.role in ("all", "worker") if run_workers is None else run_workers
    # Live events: the store announces what it stored through the fan-out (every role);
    # api processes deliver the announcements to their subscribers.
    app[keys.FANOUT] = make_fanout(settings)
    backends = announcing(backends or make_backends(settings), app[keys.FANOUT])
    app.cleanup_ctx.append(_backends_context(backends, clock))
    app.cleanup_ctx.append(live_context(serve=settings.role in ("all", "api")))
    app.on_shutdown.append(close_streams)
    if workers:
        app.cleanup_ctx.append(_workers_context)
    return app


def _backends_context(backends: Backends, clock: Clock):  # type: ignore[no-untyped-def]
    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        async with opened(backends):
            if settings.database_url.startswith("sqlite://"):
                # The embedded default sets itself up; production runs `chatd migrate` first.
                applied = await backends.store.migrate()
                if applied:
                    logger.info("applied migrations: %s", ", ".join(applied))
            service = ChatService(
                backends,
                cache_ttl=settings.cache_ttl_seconds,
                idempotency_ttl=settings.idempotency_ttl_seconds,
                groups_in_flight=settings.accept_groups_in_flight,
                max_pending_creations=settings.max_pending_creations,
                # The group's store work ends before the requests' deadline, so a store that
                # stopped answering frees its group's slot for the next one.
                numbering_timeout=settings.request_deadline_seconds * 0.8,
                max_chats_per_application=settings.max_chats_per_application,
                clock=clock,
                limiter=_limiter(settings, backends),
            )
            app[keys.BACKENDS] = backends
            app[keys.SERVICE] = service
            renewing = _renew_stream_leases(service.limiter) if settings.role in ("all", "api") else None
            # Relayed edits are announced too: the api's own announcement is lost if it dies first.
            app[keys.PIPELINE] = Pipeline(
                backends, settings, service.forget_applications, announce=app[keys.FANOUT].announce
            )
            try:
                yield
            finally:
                if renewing is not None:
                    renewing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renewing
                # Requests are finished by now; a group they joined may still be publishing.
                await service.acceptor.drain()
                await shutdown.report(app)  # the loops have stopped (their context closed first)

    return context


def _limiter(settings: Settings, backends: Backends) -> Limiter | None:
    """The per-application rate limiter (chatd/limits), or None with CHATD_RATE_LIMITS=0."""
    if not settings.rate_limits:
        return None
    book = LimitBook(
        limits_defaults(settings.rate_limit_values()),
        backends.overrides,
        OptionalCache(backends.cache),
        cache_ttl=settings.cache_ttl_seconds,
    )
    # A held refusal must still be answered well within the request deadline.
    hold = min(settings.rate_refusal_hold_seconds, settings.request_deadline_seconds / 2)
    return Limiter(book, backends.rates, backends.streams, hold_seconds=hold)


def _renew_stream_leases(limiter: Limiter | None) -> asyncio.Task[None] | None:
    """Renew this api process's live-stream leases in Redis every third of a lease, while it runs."""
    if limiter is None or limiter.shared_streams is None:
        return None

    async def renew() -> None:
        while True:
            await asyncio.sleep(STREAM_LEASE_SECONDS / 3)
            try:
                await limiter.refresh_streams()
            except BackendUnavailable as exc:  # the leases last two more rounds; the next one may do
                logger.warning("could not renew live-stream leases: %s", exc)

    return asyncio.create_task(renew(), name="stream-lease-renewal")


async def _workers_context(app: web.Application) -> AsyncIterator[None]:
    supervisor = Supervisor(shutdown_timeout=app[keys.SETTINGS].shutdown_timeout_seconds)
    app[keys.SUPERVISOR] = supervisor
    app[keys.PIPELINE].start(supervisor)
    logger.info("background loops started: %s", ", ".join(supervisor.names))
    yield
    await supervisor.stop()
    logger.info("background loops stopped")
