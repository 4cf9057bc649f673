"""Choosing the fan-out for a configuration: Redis pub/sub, Unix sockets, or in-process.

Apart from ``chatd.live.fanout`` so that the base module does not import the engines built
on it; each engine's driver is imported only when chosen.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from chatd.live.fanout import Fanout, LocalFanout
from chatd.settings import Settings


def socket_directory(embedded_file: str) -> str:
    """Where the embedded fan-out's sockets live: beside the embedded file (``chatd.live/``).

    A Unix socket path is limited to 107 bytes; a directory too deep for that is replaced by
    one in /tmp named after it, which every process of the same file finds as well.
    """
    path = Path(os.path.realpath(embedded_file))  # one spelling of it for every process
    directory = str(path.with_suffix("")) + ".live"
    if len(directory) > 85:  # + "/<pid>-<8 hex>.sock" stays within 107
        digest = hashlib.sha256(directory.encode()).hexdigest()[:16]
        directory = f"/tmp/chatd-live-{digest}"
    return directory


def make_fanout(settings: Settings) -> Fanout:
    """The fan-out for ``settings`` (unopened)."""
    if settings.redis_url:
        from chatd.live.redis_fanout import RedisFanout

        return RedisFanout(settings.redis_url, channel=f"{settings.redis_prefix}live")
    from chatd.backends.registry import embedded_path

    embedded = embedded_path(settings)
    if embedded == ":memory:":
        return LocalFanout()
    from chatd.live.unix_fanout import UnixFanout

    return UnixFanout(socket_directory(embedded))
