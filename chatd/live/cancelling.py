"""Stopping the live loops for sure.

On Python 3.11 a cancel that lands just as an ``asyncio.timeout`` expires can come out as a
TimeoutError, and a loop that treats timeouts as routine (a feed's timer, redis-py's
``get_message``) then goes on as if nothing was asked: shutdown would wait for ever. Loops
check ``cancel_requested()`` where they handle such errors, and ``cancel_all`` asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

logger = logging.getLogger(__name__)


def cancel_requested() -> bool:
    """Whether the running task has been asked to stop (even if the CancelledError was lost)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_all(tasks: Iterable[asyncio.Task[None]], rounds: int = 20, wait: float = 0.5) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again any that swallowed the first cancel."""
    pending = set(tasks)
    for _ in range(rounds):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait)
    logger.warning("live loops still running at shutdown: %s", ", ".join(t.get_name() for t in pending))
