"""Edits a resuming client missed: ``message.updated`` for the messages it already had.

A client resuming after ``n`` (``Last-Event-ID``, ``?after=``) is replayed the messages above
``n`` with their current text; the ones up to ``n`` it had before it went away, and any of them
edited meanwhile would stay old on its screen. So it is also sent a ``message.updated`` for each
of those edited within the replay window (``CHATD_LIVE_EDIT_REPLAY_SECONDS``, at most
``CHATD_LIVE_EDIT_REPLAY_EVENTS``, the most recently edited), read from the store's last-edit
times. It may have seen some of them already; the revision tells (and the subscriber sends an
edit no newer than one it was given once only).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from chatd.live import events
from chatd.live.cancelling import cancel_requested
from chatd.live.subscriber import Subscriber
from chatd.ports import Store

logger = logging.getLogger(__name__)

# After a failed store read, the replay tries again this much later (while the client stays).
_RETRY_SECONDS = 1.0


async def replay_edits(
    store: Store,
    application_id: int,
    chat_number: int,
    subscriber: Subscriber,
    up_to: int,
    since: datetime,
    limit: int,
) -> None:
    """Give ``subscriber`` the edits of messages numbered up to ``up_to`` made at ``since`` or later."""
    while subscriber.closed is None:
        try:
            edited = await store.recent_edits(application_id, chat_number, up_to, since, limit)
        except Exception:
            if cancel_requested():
                raise asyncio.CancelledError from None
            logger.warning("live edit replay could not read the store; retrying", exc_info=True)
            await asyncio.sleep(_RETRY_SECONDS)
            continue
        for edit in edited:
            if subscriber.closed is not None:
                return
            subscriber.give_update(events.message_updated(edit.document, edit.updated_at))
        return
