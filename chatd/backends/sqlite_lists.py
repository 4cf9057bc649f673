"""Lists of values in SQLite statements, within the variables one statement may bind.

SQLite refuses a statement with more ``?`` than its ``SQLITE_LIMIT_VARIABLE_NUMBER``: 999 in
builds before 3.32, 32,766 since, 250,000 in Debian's. A list whose length the input decides
goes either in chunks, one statement each (``chunks``), or, where one statement must see it
whole (a search's postings query), as one JSON array bound to one variable and read with
``json_each`` (``json_list``; SQLite has JSON built in since 3.38).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import orjson

T = TypeVar("T")

# Below the lowest limit any SQLite build has had (999), with room for a statement's other variables.
CHUNK_SIZE = 500


def chunks(items: Sequence[T], size: int = CHUNK_SIZE) -> list[Sequence[T]]:
    """``items`` in slices of at most ``size``, in order (none for no items)."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def marks(count: int) -> str:
    """``?,?,...``: the placeholders of an ``IN (...)`` list of ``count`` values."""
    return ",".join("?" * count)


def json_list(items: Iterable[str | int]) -> str:
    """``items`` as one JSON array: bind it to one ``?`` and read it as ``(SELECT value FROM json_each(?))``."""
    return orjson.dumps(list(items)).decode()
