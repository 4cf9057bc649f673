"""Choosing the fan-out for a configuration: Redis pub/sub, Unix sockets, or in-process.

Apart from ``chatd.live.fanout`` so that the base module does not import the engines built
on it; each engine's driver is imported only when chosen.
"""

from __future__ import annotations

import os
from pathlib import Path

from chatd.live.fanout import Fanout, LocalFanout
from chatd.settings import Settings


def socket_directory(embedded_file: str) -> str:
    """Where the embedded fan-out's sockets live by default: beside the embedded file (``chatd.live/``).

    Never a shared name in /tmp, which another local user could create first. However deep
    it is, the sockets' paths stay within the 107 bytes a Unix socket path may have: they go
    through the directory's descriptor (``chatd.live.unix_fanout``).
    """
    path = Path(os.path.realpath(embedded_file))  # one spelling of it for every process
    return str(path.with_suffix("")) + ".live"


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

    return UnixFanout(settings.live_socket_directory or socket_directory(embedded))
